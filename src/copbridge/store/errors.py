"""Errors the store raises, independent of the database behind it."""


class StoreError(Exception):
    """Base class for store failures."""


class StoreUnavailable(StoreError):
    """The store cannot take writes (or answer) right now; nothing of the request was kept."""


class MigrationError(StoreError):
    """The schema cannot be brought to the version this code needs."""
