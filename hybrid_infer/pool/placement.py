"""What Ray resources a pool's actors ask for, and what to say when they are not placed.

Pure functions of the settings and of what the cluster reports, so that they are tested
without a GPU. The rule that matters for autoscaling clusters: a pool that asks for a
GPU device asks Ray for GPUs even when no GPU node exists yet, since that pending demand
is what makes Ray's autoscaler add one.
"""

from __future__ import annotations

from dataclasses import dataclass


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
                     available: dict, holders: str = "") -> str:
    """Why `count` new actors were not placed within `timeout_s`, and what to do.

    per_actor: the Ray resources each asks for ({"num_cpus":..., "num_gpus":...});
    cluster, available: ray.cluster_resources() and ray.available_resources();
    holders: the other pools of this engine and what they hold (pressure.holders_text).
    """
    head = (f"{count} new actor(s) were not placed and loaded within {timeout_s:.0f} s "
            f"(place_timeout_s)")
    gpus = per_actor.get("num_gpus") or 0
    if gpus > 0 and not cluster.get("GPU"):
        return (f"{head}: they ask for {gpus} GPU(s) each and the cluster has no GPU yet "
                f"({cluster} in all). On an autoscaling cluster GPU nodes may still be "
                "starting: raise place_timeout_s (--place-timeout); otherwise add GPU "
                "nodes, or run on CPU with device='cpu' (--device cpu)")
    held = (f". Pools holding resources, none of which could give way (busy pools never "
            f"do; idle ones scale down to their min_actors): {holders}" if holders else "")
    return (f"{head}: the cluster may lack the CPUs/GPUs they ask for ({per_actor} each; "
            f"{available} free){held}; ask for fewer actors or resources, stop a pool "
            "(hybrid-infer pool stop), or add nodes")


# -- CPU pools sized by default: one actor per node, on the node's cores ---------------
@dataclass(frozen=True)
class NodeView:
    """One alive Ray node: its id, its CPUs in all, and those free now."""

    node_id: str
    cpus: float
    free_cpus: float


def plan_on_nodes(count: int, nodes: list[NodeView], pool_actors: dict[str, int],
                  cpus_per_actor: float = 1.0) -> list[tuple[str | None, int | None]]:
    """Where `count` new CPU actors go, and how many torch threads each runs.

    A CPU actor sized by default runs its model on the cores of the node it is placed
    on, shared with this pool's other actors there (`pool_actors`: node id -> count):
    each new actor goes to the node with a free slot (`cpus_per_actor`) holding the
    fewest of them, then the most free CPUs, and gets `node CPUs // actors there`
    threads. When no node has a free slot (yet: Ray's view of freed resources lags a
    moment), the same order over all nodes; the manager places softly, so an actor
    still goes where there is room. (None, None) only when there is no node.
    """
    free = {node.node_id: node.free_cpus for node in nodes}
    cpus = {node.node_id: node.cpus for node in nodes}
    placed = dict(pool_actors)
    chosen: list[str | None] = []
    for _ in range(count):
        fits = [node_id for node_id in free if free[node_id] >= cpus_per_actor - 1e-9]
        fits = fits or list(free)
        if not fits:
            chosen.append(None)
            continue
        node_id = min(fits, key=lambda n: (placed.get(n, 0), -free[n]))
        free[node_id] -= cpus_per_actor
        placed[node_id] = placed.get(node_id, 0) + 1
        chosen.append(node_id)
    # threads once all are placed: actors started together share their node evenly
    return [(node_id, None) if node_id is None else
            (node_id, max(1, int(cpus[node_id] // placed[node_id]))) for node_id in chosen]


def cpu_nodes() -> list[NodeView]:
    """The alive Ray nodes that have CPUs, as Ray reports them now."""
    import ray

    free = _free_per_node()
    return [NodeView(node["NodeID"], node["Resources"]["CPU"], free.get(node["NodeID"], 0.0))
            for node in ray.nodes()
            if node.get("Alive") and node.get("Resources", {}).get("CPU", 0) > 0]


def _free_per_node() -> dict[str, float]:
    """node id -> CPUs free now (Ray's per-node view of available resources)."""
    from ray._private.state import state  # no public per-node "available" API in Ray 2.x

    return {node_id: float(resources.get("CPU", 0.0))
            for node_id, resources in state.available_resources_per_node().items()}


def runs_on_node_cores(torch_threads: int | None, num_cpus_per_actor: float | None,
                       num_gpus: float) -> bool:
    """True when a pool's actors run their model on their node's cores: CPU actors (no
    GPU) given neither torch_threads nor num_cpus_per_actor. Such a pool holds one Ray
    CPU per actor (a slot, so that other pools and Ray Data tasks still fit), places its
    actors one per node (plan_on_nodes), and grows to at most one actor per node."""
    return torch_threads is None and num_cpus_per_actor is None and not num_gpus


def cpus_per_actor(num_cpus_per_actor: float | None) -> float:
    """The Ray CPUs each actor holds: the setting, or one (a slot) by default."""
    return 1.0 if num_cpus_per_actor is None else num_cpus_per_actor
