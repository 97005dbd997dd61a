"""``dretriever datastore delete``: see ``commands/datastore_change.py``."""

from .datastore_change import delete as main  # noqa: F401
