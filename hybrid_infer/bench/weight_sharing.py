"""How much memory N pool actors on one node add: one copy of the weights, or N?

Starts a local Ray, a pool of N actors (default 4, resnet50) built on the object
store's single copy, and, for comparison, N plain actors that each load their own
copy (what a per-worker model cache does). Each group serves one batch (so
activations are counted), then every actor's private memory (USS: pages only that
process holds) and proportional share (PSS) are read from /proc.

    python benchmarks/weight_sharing.py --model resnet50 --actors 4
"""

from __future__ import annotations

import argparse
import io
import json
import os

import numpy as np
import psutil
import pyarrow as pa

MiB = 1 << 20


class PrivateCopyActor:
    """The comparison: a model loaded into this process's own heap."""

    def __init__(self, spec, threads: int):
        import torch

        torch.set_num_threads(threads)
        self.module = spec.load_module()

    def run(self, batch):
        import torch

        with torch.inference_mode():
            return self.module(batch).shape[0]

    def pid(self):
        return os.getpid()


def memory_of(pid: int) -> dict:
    info = psutil.Process(pid).memory_full_info()
    return {"rss": info.rss / MiB, "uss": info.uss / MiB, "pss": info.pss / MiB}


def sample_batch(n: int = 8) -> pa.RecordBatch:
    from PIL import Image

    rng = np.random.default_rng(0)
    values = []
    for _ in range(n):
        buffer = io.BytesIO()
        Image.fromarray(rng.integers(0, 255, (256, 256, 3), dtype=np.uint8)).save(buffer, "JPEG")
        values.append(buffer.getvalue())
    return pa.record_batch({"content": pa.array(values, pa.binary())})


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="resnet50")
    parser.add_argument("--actors", type=int, default=4)
    parser.add_argument("--output", default="benchmarks/results/weight_sharing.json")
    args = parser.parse_args(argv)

    import ray
    import torch

    from hybrid_infer.decode import ImageDecoder
    from hybrid_infer.models import ModelSpec
    from hybrid_infer.pool.registry import Pool
    from hybrid_infer.pool.settings import PoolSettings
    from hybrid_infer.runtime import connect_ray

    connect_ray(None, num_cpus=2 * args.actors + 2, object_store_memory=1 << 30)
    spec = ModelSpec(args.model, weights="random")
    batch = sample_batch()

    pool = Pool.get_or_create(spec, PoolSettings(num_actors=args.actors, torch_threads=1,
                                                 batch_size=8))
    actors = pool.actors()
    pool_pids = [s["pid"] for s in ray.get([a.status.remote() for a in actors])]
    pooled_loaded = [memory_of(pid) for pid in pool_pids]
    ray.get([actor.infer.remote(batch) for actor in actors])
    pooled = [memory_of(pid) for pid in pool_pids]
    weights_mib = pool.describe()["weights_bytes"] / MiB
    pool.stop()

    decoder = ImageDecoder()
    tensors = torch.stack([decoder(v) for v in batch.column(0).to_pylist()])
    private_cls = ray.remote(num_cpus=1)(PrivateCopyActor)
    private = [private_cls.remote(spec, 1) for _ in range(args.actors)]
    private_pids = ray.get([a.pid.remote() for a in private])
    private_loaded = [memory_of(pid) for pid in private_pids]
    ray.get([actor.run.remote(tensors) for actor in private])
    private_mem = [memory_of(pid) for pid in private_pids]

    def total(rows, key):
        return round(sum(r[key] for r in rows), 1)

    report = {
        "model": args.model, "actors": args.actors, "weights_mib": round(weights_mib, 1),
        "after_load": {"pool_actor_uss_mib": total(pooled_loaded, "uss"),
                       "private_copy_uss_mib": total(private_loaded, "uss")},
        "pool_actor_uss_mib": total(pooled, "uss"), "pool_actor_pss_mib": total(pooled, "pss"),
        "private_copy_uss_mib": total(private_mem, "uss"),
        "private_copy_pss_mib": total(private_mem, "pss"),
        "after_one_batch": "the figures below",
        "per_actor_pool": pooled, "per_actor_private_copy": private_mem,
    }
    # Extra memory of the pool: its actors' private pages plus the one shared copy.
    report["pool_extra_mib"] = round(report["pool_actor_uss_mib"] + weights_mib, 1)
    report["private_extra_mib"] = report["private_copy_uss_mib"]
    report["pool_to_private_ratio"] = round(report["pool_extra_mib"] / report["private_extra_mib"], 3)
    os.makedirs(os.path.dirname(args.output), exist_ok=True)
    with open(args.output, "w") as handle:
        json.dump(report, handle, indent=2)
    print(json.dumps({k: v for k, v in report.items() if not k.startswith("per_actor")}, indent=2))
    ray.shutdown()


if __name__ == "__main__":
    main()
