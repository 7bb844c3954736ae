"""The contract of what a pool serves: `Servable`.

Image models (models/base.py: every ModelSpec source) and predict_batch_udf's user
functions (actor/predict_fn.py: PredictFnSpec) implement it; the registry uses only
this, never asks what a spec happens to have.

- `identity`: what is served (part of the pool key);
- `payload_digest()`: identifies the payload's bytes (the other part of the key);
- `build_payload()`: what the pool's manager puts into the object store once and every
  actor is built from (weights arrays, a pickled function);
- `payload_off_driver`: build the payload in a one-off task on the driver's node (large
  payloads: weights) rather than in the driver. A Ray Client driver is not a node, so
  it always builds it itself (registry.start_arguments);
- `actor_class()`: the actor serving it, a subclass of actor.service.PoolActor,
  constructed as `cls(spec, payload, settings, pool_name, index)`, where `payload` may
  arrive as a `PayloadRef` that its constructor resolves (`resolve_payload`).
"""

from __future__ import annotations


class Servable:
    payload_off_driver: bool = False

    @property
    def identity(self) -> str:
        raise NotImplementedError

    def payload_digest(self) -> str:
        raise NotImplementedError

    def build_payload(self):
        raise NotImplementedError

    def actor_class(self) -> type:
        raise NotImplementedError


def payload_nbytes(payload) -> int:
    """Bytes a payload holds in the object store (weights arrays or plain bytes)."""
    if isinstance(payload, (bytes, bytearray, memoryview)):
        return len(payload)
    from hybrid_infer.weights import nbytes

    return nbytes(payload)


class PayloadRef:
    """The payload's object ref, boxed so that Ray passes it to an actor unresolved: Ray
    holds back an actor whose arguments are still being computed, so with the bare ref
    a new pool's actors would start their processes (Python, torch) only after the
    weights were built. Boxed, the two overlap; the constructor then resolves it."""

    def __init__(self, ref):
        self.ref = ref


def resolve_payload(payload):
    """The payload itself: from the object store (zero-copy on the node) for a
    PayloadRef, as given otherwise (an actor built directly, e.g. by a benchmark)."""
    if isinstance(payload, PayloadRef):
        import ray

        return ray.get(payload.ref)
    return payload
