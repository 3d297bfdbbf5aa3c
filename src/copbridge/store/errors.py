"""Errors the store raises, independent of the database behind it."""


class StoreError(Exception):
    """Base class for store failures."""


class StoreUnavailable(StoreError):
    """The store cannot take writes (or answer) right now; nothing of the request was kept."""


class CommitInDoubt(StoreUnavailable):
    """The connection to the store was lost while COMMIT was under way: the database may have
    kept the write or not, and this process cannot tell. Not accepted, like any
    StoreUnavailable; a retry with the same ids is answered as a duplicate if it was kept."""


class MigrationError(StoreError):
    """The schema cannot be brought to the version this code needs."""
