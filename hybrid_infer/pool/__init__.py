"""The pool, driver side: settings and key, `Pool` (registry.py); and its control plane, `PoolManager` (manager.py), which runs as a detached Ray actor."""
