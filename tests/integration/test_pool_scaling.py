"""A busy pool grows under a running job and shrinks back after it, on the real test
cluster (the decisions themselves are tested as pure code in test_pool_policies.py).

The predict function sleeps per batch, so that the pool's one actor is the bottleneck
whatever else the machine is doing: the job keeps its in-flight windows full.
"""

from __future__ import annotations

import threading
import time

import pytest

from hybrid_infer import predict_batch_udf
from hybrid_infer.pool.registry import Pool
from hybrid_infer.pool.settings import PoolSettings


def _pool_with(placement_value: float) -> Pool:
    for name in Pool.names():
        pool = Pool.get(name)
        if pool.describe()["placement"].grow_after_s == placement_value:
            return pool
    raise AssertionError("the job's pool is not running")


@pytest.mark.timeout(400)
def test_a_busy_pool_grows_under_a_job_and_shrinks_back_after(spark, ray_address):
    from pyspark.sql.types import FloatType

    def make_slow_double_fn():  # defined here: pickled by value, as a user's would be
        import time as clock

        def predict(inputs):
            clock.sleep(0.25)
            return inputs * 2.0
        return predict

    settings = PoolSettings(num_actors=1, max_actors=2, num_cpus_per_actor=0.5,
                            grow_after_s=1.5, shrink_after_s=4.0)
    double = predict_batch_udf(make_slow_double_fn, return_type=FloatType(), batch_size=5,
                               pool=settings)
    pool = _pool_with(1.5)
    serving: set[int] = set()  # actor indices seen answering rows during the job
    done = threading.Event()

    def watch():
        while not done.is_set():
            try:
                serving.update(a["index"] for a in pool.status()["actors"] if a["rows"])
            except Exception:  # noqa: BLE001 - an actor retired between two calls
                pass
            time.sleep(1)

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    try:
        # 160 batches of 5 rows at 0.25 s each: about 40 s on one actor
        rows = spark.range(800).repartition(8).select("id", double("id").alias("y")).collect()
    finally:
        done.set()
        watcher.join()
    assert sorted(r["id"] for r in rows) == list(range(800))  # every row, exactly once
    assert all(r["y"] == 2.0 * r["id"] for r in rows)
    resizes = pool.status()["resizes"]
    assert [tuple(r[1:3]) for r in resizes if r[3] == "busy"] == [(1, 2)], resizes
    assert len(serving) == 2, f"the grown actor never served the running job: {serving}"
    deadline = time.time() + 120
    while len(pool.actors()) > 1 and time.time() < deadline:
        time.sleep(1)
    status = pool.status()
    assert len(status["actors"]) == 1, status["resizes"]
    assert [tuple(r[1:3]) for r in status["resizes"] if r[3] == "load fell"] == [(2, 1)]
    pool.stop()
