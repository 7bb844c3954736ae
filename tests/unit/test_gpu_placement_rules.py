"""GPU placement that does not surprise, decided by pure functions (tested on a
CPU-only machine; on the real cluster: tests/integration/test_gpu_placement.py).

- A pool for device="cuda" asks Ray for GPUs even before the cluster has any (so an
  autoscaler sees the demand), and says so when none come within place_timeout_s.
- An actor that Ray gave a GPU but whose torch cannot use CUDA refuses to start.
- Torch threads follow the CPUs Ray assigned the actor, not the host's cores.
- The command line prints such warnings as one plain line.
"""

from __future__ import annotations

import os
import warnings

import pytest

from hybrid_infer.actor.resources import check_gpu_usable, default_torch_threads
from hybrid_infer.errors import ConfigurationError
from hybrid_infer.pool.placement import gpus_per_actor, unplaced_message


@pytest.mark.parametrize("device, asked, cluster_gpus, expected", [
    ("cuda", None, 0, 1),      # no GPU node yet: still asks, so an autoscaler adds one
    ("cuda", None, 4, 1),
    ("cuda", 0.5, 0, 0.5),     # the user's own number wins
    ("auto", None, 2, 1),
    ("auto", None, 0, 0),      # decided from the cluster's GPUs at start
    ("auto", 1, 0, 1),
    ("cpu", None, 8, 0),
    ("cpu", 1, 8, 1),
])
def test_gpus_per_actor(device, asked, cluster_gpus, expected):
    assert gpus_per_actor(device, asked, cluster_gpus) == expected


def test_the_placement_error_says_gpus_were_asked_for_and_none_are_there_yet():
    text = unplaced_message(2, 30, {"num_cpus": 1, "num_gpus": 1}, {"CPU": 8.0},
                            {"CPU": 6.0})
    assert "2 new actor(s) were not placed and loaded within 30 s (place_timeout_s)" in text
    assert "they ask for 1 GPU(s) each and the cluster has no GPU yet" in text
    assert "--place-timeout" in text and "device='cpu'" in text
    busy = unplaced_message(1, 5, {"num_cpus": 64, "num_gpus": 1},
                            {"CPU": 8.0, "GPU": 1.0}, {"CPU": 8.0, "GPU": 1.0})
    assert "no GPU yet" not in busy and "'num_cpus': 64" in busy and "fewer actors" in busy


def test_an_actor_holding_a_gpu_that_torch_cannot_use_fails_with_why():
    with pytest.raises(ConfigurationError) as caught:
        check_gpu_usable("auto", [0], False, "2.9.0+cu130", "13.0", "0")
    text = str(caught.value)
    for part in ("holds GPU(s) [0] from Ray", "CUDA_VISIBLE_DEVICES='0'",
                 "torch.cuda.is_available() is False", "built for CUDA 13.0",
                 "driver may be too old", "device='cpu'"):
        assert part in text, (part, text)
    with pytest.raises(ConfigurationError, match="torch 2.9.0\\+cpu is a CPU-only build"):
        check_gpu_usable("cuda", ["GPU-1234"], False, "2.9.0+cpu", None, None)


@pytest.mark.parametrize("device, gpu_ids, cuda_available", [
    ("auto", [], False),      # no GPU from Ray: CPU is what was asked for
    ("auto", [0], True),      # a usable GPU
    ("cpu", [0], False),      # device="cpu" with a GPU reserved: the user's choice
])
def test_usable_or_unasked_gpus_pass(device, gpu_ids, cuda_available):
    check_gpu_usable(device, gpu_ids, cuda_available, "2.9.0", "13.0", None)


@pytest.mark.parametrize("assigned, expected", [(1.0, 1), (2.0, 2), (1.5, 2), (0.5, 1),
                                                (0.0, 1)])
def test_torch_threads_follow_the_assigned_cpus(assigned, expected):
    assert default_torch_threads(assigned) == expected


def test_outside_ray_torch_threads_are_the_machines_cores():
    assert default_torch_threads(None) == max(1, os.cpu_count() or 1)


def test_the_cli_prints_warnings_as_one_plain_line(capsys):
    from hybrid_infer.cli import show_warnings_plainly
    from hybrid_infer.models import RandomWeightsWarning

    with warnings.catch_warnings():
        warnings.simplefilter("always")
        show_warnings_plainly()
        warnings.warn("resnet18 runs with random weights:\n  its predictions are noise",
                      RandomWeightsWarning)
    err = capsys.readouterr().err
    assert err == ("hybrid-infer: warning: resnet18 runs with random weights: its "
                   "predictions are noise\n"), err
