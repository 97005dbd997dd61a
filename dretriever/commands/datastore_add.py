"""``dretriever datastore add``: see ``commands/datastore_change.py``."""

from .datastore_change import add as main  # noqa: F401
