"""What Ray gave this actor (CPUs, GPUs), and what the actor makes of it.

An actor sizes its torch threads from the CPUs Ray assigned it, not from the host's
cores (which other actors share), and refuses to start when Ray gave it a GPU that
torch cannot use, rather than silently running on CPU. Ray is imported only here and
only when present: the actor's data path also runs without Ray (benchmarks/gpu_actor.py).
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass

from hybrid_infer.errors import ConfigurationError


@dataclass(frozen=True)
class Granted:
    """This Ray actor's resources: GPU ids and CPUs (none and None outside an actor)."""

    gpu_ids: tuple = ()
    cpus: float | None = None

    @classmethod
    def current(cls) -> "Granted":
        try:
            import ray
        except ImportError:
            return cls()
        if not ray.is_initialized() or ray.get_runtime_context().get_actor_id() is None:
            return cls()  # not a Ray actor (a benchmark, a test building it directly)
        assigned = ray.get_runtime_context().get_assigned_resources()
        return cls(tuple(ray.get_gpu_ids()), float(assigned.get("CPU", 0.0)))


def default_torch_threads(assigned_cpus: float | None, node_threads: int | None = None) -> int:
    """Torch threads when torch_threads is not set.

    node_threads: this actor's share of its node's cores, given by the pool's manager to
    a CPU pool sized by default (pool/placement.py: plan_on_nodes); capped at the cores
    this process may run on (a node may declare more CPUs to Ray than it has).
    Otherwise the CPUs Ray assigned (rounded up, at least 1); outside Ray, the cores.
    """
    if node_threads:
        return max(1, min(node_threads, host_cores()))
    if assigned_cpus is None:
        return host_cores()
    return max(1, math.ceil(assigned_cpus))


def host_cores() -> int:
    """The cores this process may run on (its CPU affinity, else the machine's)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return max(1, os.cpu_count() or 1)


def check_gpu_usable(requested_device: str, gpu_ids, cuda_available: bool,
                     torch_version: str, torch_cuda: str | None,
                     visible_devices: str | None) -> None:
    """Raise ConfigurationError when Ray gave this actor GPU(s) that torch cannot use.

    Without it, device="auto" silently ran on CPU inside an actor holding a GPU (for
    example a CUDA 13 torch build on a driver too old for it). device="cpu" with a GPU
    is the user's explicit choice and passes.
    """
    if requested_device == "cpu" or not gpu_ids or cuda_available:
        return
    build = (f"torch {torch_version} is a CPU-only build" if not torch_cuda else
             f"torch {torch_version} is built for CUDA {torch_cuda}; the NVIDIA driver may "
             f"be too old for it (nvidia-smi shows the CUDA version the driver supports)")
    raise ConfigurationError(
        f"this actor holds GPU(s) {list(gpu_ids)} from Ray (CUDA_VISIBLE_DEVICES="
        f"{visible_devices!r}) but torch cannot use CUDA (torch.cuda.is_available() is "
        f"False): {build}. Install a torch build that matches the driver, or update the "
        "driver; or run on CPU with device='cpu' and num_gpus_per_actor=0")
