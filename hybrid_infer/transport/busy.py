"""How long a server held work: the utilisation signal behind a pool's growth.

`BusyTime` counts the wall time during which at least one request batch was held
(received and not answered yet). The pool's manager reads it from each actor every few
seconds; the busy fraction between two readings is that actor's utilisation
(pool/scaling.py). An actor that clients keep fed is busy close to 100% of the time.
"""

from __future__ import annotations

import threading
import time
from typing import Callable


class BusyTime:
    """Thread-safe count of held batches and of the time with at least one held."""

    def __init__(self, clock: Callable[[], float] = time.monotonic):
        self._clock = clock
        self._lock = threading.Lock()
        self._busy_s = 0.0
        self._since: float | None = None  # when the current busy stretch began
        self.held = 0  # request batches received and not answered yet
        self.held_peak = 0

    def enter(self) -> None:
        with self._lock:
            if self.held == 0:
                self._since = self._clock()
            self.held += 1
            self.held_peak = max(self.held_peak, self.held)

    def leave(self) -> None:
        with self._lock:
            self.held -= 1
            if self.held == 0 and self._since is not None:
                self._busy_s += self._clock() - self._since
                self._since = None

    def seconds(self) -> float:
        """Busy seconds so far, the stretch under way included."""
        with self._lock:
            running = self._clock() - self._since if self._since is not None else 0.0
            return self._busy_s + running
