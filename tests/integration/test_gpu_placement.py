"""GPU placement and torch threads on the real test cluster (which has no GPU): a cuda
pool asks Ray for GPUs even before the cluster has any, and says so when none come; an
actor runs as many torch threads as Ray gave it CPUs. The decisions themselves are pure
functions: tests/unit/test_gpu_placement_rules.py.
"""

from __future__ import annotations

import pytest

from hybrid_infer.errors import PoolError
from hybrid_infer.models import ModelSpec
from hybrid_infer.pool.registry import Pool
from hybrid_infer.pool.settings import PoolSettings


@pytest.mark.parametrize("cpus", [1, 2])
def test_an_actor_runs_as_many_torch_threads_as_ray_gave_it_cpus(ray_address, cpus):
    # batch_size differs per case: a pool of its own (placement is not in the pool key)
    settings = PoolSettings(num_actors=1, num_cpus_per_actor=cpus, batch_size=2 + cpus,
                            decode_threads=1)
    pool = Pool.get_or_create(ModelSpec("mobilenet_v3_small", seed=21, weights="random"),
                              settings)
    try:
        (actor,) = pool.status()["actors"]
    finally:
        pool.stop()
    assert actor["torch_threads"] == cpus
    assert actor["streams"] * actor["threads_per_stream"] <= cpus


def test_a_cuda_pool_asks_for_gpus_on_a_cluster_without_any(ray_address):
    import ray

    assert not ray.cluster_resources().get("GPU")  # the test cluster is CPU-only
    spec = ModelSpec("mobilenet_v3_small", seed=22, weights="random")
    settings = PoolSettings(num_actors=1, device="cuda", place_timeout_s=5,
                            num_cpus_per_actor=0.5)
    try:
        with pytest.raises(PoolError, match="ask for 1 GPU\\(s\\) each and the cluster has "
                                            "no GPU yet"):
            Pool.get_or_create(spec, settings)
    finally:
        for name in Pool.names():
            if Pool.get(name).describe()["spec"] == spec:
                Pool.get(name).stop()
