"""The pool, driver side: settings and key, the registry (PoolManager, Pool)."""
