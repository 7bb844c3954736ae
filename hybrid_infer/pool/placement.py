"""What Ray resources a pool's actors ask for, and what to say when they are not placed.

Pure functions of the settings and of what the cluster reports, so that they are tested
without a GPU. The rule that matters for autoscaling clusters: a pool that asks for a
GPU device asks Ray for GPUs even when no GPU node exists yet, since that pending demand
is what makes Ray's autoscaler add one.
"""

from __future__ import annotations


def gpus_per_actor(device: str, num_gpus_per_actor: float | None, cluster_gpus: float) -> float:
    """The GPUs each actor asks Ray for.

    num_gpus_per_actor: the user's choice, always honoured.
    device="cuda": 1, whatever the cluster holds now (an autoscaler adds GPU nodes for
    actors that wait for one).
    device="auto": 1 when the cluster has GPUs now (`cluster_gpus`, from
    ray.cluster_resources() at pool start), else 0. Ray does not report cheaply which
    node types an autoscaler could add, so on an autoscaling cluster whose GPU nodes
    are not up yet "auto" runs on CPU: pass device="cuda" there.
    device="cpu": 0.
    """
    if num_gpus_per_actor is not None:
        return num_gpus_per_actor
    if device == "cuda":
        return 1
    if device == "auto" and cluster_gpus > 0:
        return 1
    return 0


def unplaced_message(count: int, timeout_s: float, per_actor: dict, cluster: dict,
                     available: dict) -> str:
    """Why `count` new actors were not placed within `timeout_s`, and what to do.

    per_actor: the Ray resources each asks for ({"num_cpus":..., "num_gpus":...});
    cluster, available: ray.cluster_resources() and ray.available_resources().
    """
    head = (f"{count} new actor(s) were not placed and loaded within {timeout_s:.0f} s "
            f"(place_timeout_s)")
    gpus = per_actor.get("num_gpus") or 0
    if gpus > 0 and not cluster.get("GPU"):
        return (f"{head}: they ask for {gpus} GPU(s) each and the cluster has no GPU yet "
                f"({cluster} in all). On an autoscaling cluster GPU nodes may still be "
                "starting: raise place_timeout_s (--place-timeout); otherwise add GPU "
                "nodes, or run on CPU with device='cpu' (--device cpu)")
    return (f"{head}: the cluster may lack the CPUs/GPUs they ask for ({per_actor} each; "
            f"{available} free); ask for fewer actors or resources, or add nodes")
