"""The pool's one object-store copy of the weights, owned by its manager.

Built by a one-off task on the driver's node (weights paths are the driver's), or put
from a payload the driver built (a Ray Client driver is no node). Either way the ref is
owned by the manager, a detached actor, so the copy outlives the driver that started
the pool, and neither the driver nor the manager holds torch or the weights.
"""

from __future__ import annotations

import contextlib

from hybrid_infer.errors import PoolError, unwrapped
from hybrid_infer.servable import payload_nbytes


class WeightsCopy:
    def __init__(self, spec):
        self.spec = spec
        self.ref = None
        self.built = False  # the build behind `ref` has answered
        self.nbytes = 0

    @property
    def present(self) -> bool:
        return self.ref is not None

    def put(self, payload) -> None:
        import ray

        self.ref = ray.put(payload)
        self.nbytes, self.built = payload_nbytes(payload), True

    def submit_build(self, node_id: str) -> None:
        """Build the spec's payload in a one-off task on `node_id`; `wait` for it."""
        import ray
        from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

        # num_cpus=0: building must not wait behind actors holding every CPU;
        # max_calls=1: the worker (torch, a transient copy of the model) exits after.
        build = ray.remote(num_cpus=0, max_calls=1)(_build_payload).options(
            scheduling_strategy=NodeAffinitySchedulingStrategy(node_id, soft=False))
        self.built = False
        self.ref = build.remote(self.spec)

    def wait(self, timeout_s: float) -> None:
        """Wait for the build (once): its errors and timeout are the pool's."""
        import ray

        if self.ref is None:
            raise PoolError("the pool has no weights yet: start it with Pool.get_or_create")
        if self.built:
            return
        try:
            arrays = ray.get(self.ref, timeout=timeout_s)
        except ray.exceptions.RayTaskError as exc:
            raise unwrapped(exc) from None
        except ray.exceptions.GetTimeoutError:
            with contextlib.suppress(Exception):
                ray.cancel(self.ref, force=True)
            raise PoolError(f"building the weights of {self.spec.identity} took over "
                            f"{timeout_s:.0f} s (build_timeout_s): raise build_timeout_s for "
                            "a large checkpoint on slow storage") from None
        # (arrays: read-only views of the object; not copied)
        self.nbytes, self.built = payload_nbytes(arrays), True

    def drop(self) -> None:
        self.ref, self.built = None, False


def _build_payload(spec):
    return spec.build_payload()
