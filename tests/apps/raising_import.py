"""Importing this module raises (a user's plug-in module with a bug at import time)."""

raise ImportError("user module is broken at import time")
