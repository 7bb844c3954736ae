"""The two long-lived processes of tests/test_separate_hosts.py, each on its own host.

    python separate_hosts_roles.py pool RAY_ADDRESS   # on a pool host (a Ray node)
    python separate_hosts_roles.py spark              # on the Spark host (no Ray)

Each reads one JSON request per line on stdin and answers one JSON line on stdout,
so the test drives hosts it cannot reach over the network (its own namespace has no
route to theirs): the pool role starts pools and reports their actors; the Spark role
runs a hybrid job (a real local Spark, the pool's PoolAddress, no Ray) and writes its
rows to a file.
"""

from __future__ import annotations

import json
import os
import pickle
import sys
import time
import traceback

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

ROWS_PER_BATCH = 2


def pool_role(ray_address: str) -> None:
    import ray

    from hybrid_infer.models import ModelSpec
    from hybrid_infer.pool.registry import Pool
    from hybrid_infer.runtime import connect_ray

    from faults import SMALL_MODEL, named_actor_statuses, small_settings

    connect_ray(ray_address)
    pools = {}

    def start(seed: int, settings: dict, address_file: str) -> dict:
        spec = ModelSpec(SMALL_MODEL, seed=seed, weights="random")
        pool = pools[seed] = Pool.get_or_create(spec, small_settings(**settings))
        address = pool.address()
        with open(address_file, "wb") as handle:
            pickle.dump(address, handle)
        return {"name": pool.name, "manager": address.manager, "actors": list(address.actors)}

    def actors(seed: int) -> dict:
        statuses = named_actor_statuses(pools[seed].name)
        nodes = {node["NodeID"]: node["NodeManagerAddress"] for node in ray.nodes()
                 if node["Alive"]}
        return {"actors": [{"endpoint": s["endpoint"], "rows": s["rows"],
                            "host": nodes.get(s["node_id"])} for s in statuses],
                "replaced": pools[seed].describe()["replaced_actors"]}

    def address(seed: int, address_file: str) -> dict:
        address = pools[seed].address()
        with open(address_file, "wb") as handle:
            pickle.dump(address, handle)
        return {"manager": address.manager, "actors": list(address.actors)}

    def gpus(seed: int) -> list[dict]:
        """Each actor's host, Ray GPU ids and CUDA_VISIBLE_DEVICES, from inside it."""
        def inside(self):
            return {"gpu_ids": [str(i) for i in ray.get_gpu_ids()],
                    "cuda_visible_devices": os.environ.get("CUDA_VISIBLE_DEVICES"),
                    "host": ray.util.get_node_ip_address()}
        return ray.get([actor.__ray_call__.remote(inside) for actor in pools[seed].actors()])

    def scale(seed: int, num_actors: int) -> dict:
        return {"actors": len(pools[seed].scale(num_actors))}

    def stop(seed: int) -> dict:
        return {"stopped": pools.pop(seed).stop()}

    serve({"start": start, "address": address, "actors": actors, "gpus": gpus, "scale": scale,
           "stop": stop})


def spark_role() -> None:
    from hybrid_infer.transport.protocol import RequestOptions
    from hybrid_infer.modes.hybrid import run_hybrid
    from hybrid_infer.runtime import start_spark

    from faults import images_frame, small_jpegs, small_preprocess

    spark, _ = start_spark("local[2]", extra_conf={
        "spark.driver.host": os.environ["SPARK_LOCAL_IP"],
        "spark.driver.bindAddress": os.environ["SPARK_LOCAL_IP"]})

    def run(address_file: str, count: int, seed: int, out: str, resize: int = 64,
            batch_timeout_s: float = 120.0) -> dict:
        with open(address_file, "rb") as handle:
            address = pickle.load(handle)
        preprocess = small_preprocess(resize=resize, crop=resize)
        frame = images_frame(spark, small_jpegs(count, seed=seed))
        started = time.perf_counter()
        result = run_hybrid(frame, address=address, input_col="content", id_cols=["id"],
                            options=RequestOptions(preprocess=preprocess),
                            rows_per_batch=ROWS_PER_BATCH, timeout_s=batch_timeout_s)
        rows = [(row["id"], row["prediction"], row["error"]) for row in result.collect()]
        seconds = time.perf_counter() - started
        with open(out, "w") as handle:
            json.dump(rows, handle)
        return {"rows": len(rows), "seconds": round(seconds, 2)}

    def ping(address_file: str, cert_file: str | None = None, scheme: str | None = None,
             uri_index: int = 0) -> str:
        """Ping one actor, maybe as another client (another CA, plain text): "ok" or
        the error the client got."""
        from dataclasses import replace

        from hybrid_infer.transport.client import action

        with open(address_file, "rb") as handle:
            address = pickle.load(handle)
        uri = address.actors[uri_index]
        if cert_file is not None:
            with open(cert_file, "rb") as handle:
                address = replace(address, tls_root_cert=handle.read())
        if scheme is not None:
            address = replace(address, tls_root_cert=None)
            uri = scheme + "://" + uri.split("://", 1)[1]
        try:
            return action(address, uri, "ping", connect_timeout_s=5).decode()
        except Exception as exc:  # noqa: BLE001 - what the test checks
            return f"{type(exc).__name__}: {exc}"

    assert "ray" not in sys.modules, "the Spark host imported ray"
    serve({"run": run, "ping": ping})


def serve(operations: dict) -> None:
    """One JSON request per stdin line -> one JSON answer per stdout line."""
    print("@@ " + json.dumps({"ready": True}), flush=True)
    for line in sys.stdin:
        request = json.loads(line)
        try:
            answer = {"ok": operations[request.pop("op")](**request)}
        except Exception as exc:  # noqa: BLE001 - handed to the test
            answer = {"error": f"{type(exc).__name__}: {exc}",
                      "traceback": traceback.format_exc()[-3000:]}
        print("@@ " + json.dumps(answer), flush=True)


if __name__ == "__main__":
    if sys.argv[1] == "pool":
        pool_role(sys.argv[2])
    else:
        spark_role()
