"""The engine's loggers: one per module under `hybrid_infer` (e.g. hybrid_infer.pool.registry).

A library leaves handlers to the application: in the user's driver, records go wherever
the user's logging sends them (warnings reach stderr even unconfigured). Two kinds of
process are the engine's own and get a handler here: the `hybrid-infer` command, and
the pool's manager actor, whose stderr Ray writes to its worker log (`ray logs`).
"""

from __future__ import annotations

import logging
import sys

ROOT = "hybrid_infer"
FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def log_to_stderr(level: int | str = logging.INFO) -> logging.Logger:
    """Let the engine's records at `level` and above through, to stderr unless the
    process already routes records somewhere (a handler on the root logger)."""
    logger = logging.getLogger(ROOT)
    logger.setLevel(level.upper() if isinstance(level, str) else level)
    if not logger.handlers and not logging.getLogger().handlers:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter(FORMAT))
        logger.addHandler(handler)
    return logger
