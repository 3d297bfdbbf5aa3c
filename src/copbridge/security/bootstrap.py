"""The first admin key: minted (and shown once) or taken from ``COPBRIDGE_BOOTSTRAP_KEY`` when the
store holds no key yet, so a fresh install is usable at once."""

from __future__ import annotations

from copbridge.security.keys import SCOPES, mint_key, new_key_record, now_us, parse_key
from copbridge.store import Store

BOOTSTRAP_NAME = "bootstrap admin"


def ensure_bootstrap_key(store: Store, pepper: bytes, configured: str | None) -> str | None:
    """Create the admin key if the store has none; return its text only when newly minted.

    A configured key is never echoed back (its owner already has it). Replicas starting together
    may race: the loser finds the key already there and carries on.
    """
    if store.count_keys() > 0:
        return None
    if configured is not None:
        key = parse_key(configured)
        if key is None:
            raise ValueError("COPBRIDGE_BOOTSTRAP_KEY is not a well-formed copbridge key")
        text = None
    else:
        key, text = mint_key()
    record = new_key_record(key, pepper, BOOTSTRAP_NAME, SCOPES, now_us())
    try:
        store.create_key(record, actor="bootstrap")
    except Exception:  # the adapters raise their driver's IntegrityError on a duplicate id
        if store.get_key(key.key_id) is None and store.count_keys() == 0:
            raise
        return None
    return text
