"""Every evaluation kernelwright makes, stored: SQLite by default, any SQLAlchemy URL otherwise."""
from store.api import Store
from store.db import open_engine
from store.errors import StoreError
from store.migrations import migrate

__all__ = ["Store", "StoreError", "migrate", "open_engine"]
