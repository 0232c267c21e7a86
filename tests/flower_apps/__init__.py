"""Small Flower apps, one per style of Flower's API, written against Flower only. Each runs on
Flower's own simulation and on ``fedsim run-app``; `tests/test_flower_compat.py` compares them.

Every app is deterministic given its partition ids (all nodes train every round, no noise),
so both engines must give the same numbers. Each ServerApp writes what it saw into
``RESULTS`` (module-level: the ServerApp runs in the test's process on both engines).
"""
