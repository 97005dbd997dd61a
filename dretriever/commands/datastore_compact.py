"""``dretriever datastore compact``: see ``commands/datastore_change.py``."""

from .datastore_change import compact as main  # noqa: F401
