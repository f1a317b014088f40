"""Auth collections: every query and update, and their indexes."""

from pymongo import IndexModel

INDEXES: dict[str, list[IndexModel]] = {}
