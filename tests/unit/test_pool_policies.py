"""The pool's sharing and scaling decisions as pure code: no Ray, no sleeps, a fake clock.

- LoadPolicy: a busy pool grows one actor at a time to its ceiling, a grown pool shrinks
  back to its busy size when its load falls, never both in one breath;
- IdlePolicy: an idle pool scales down to min_actors after idle_timeout_s;
- choose_yielders: idle pools give way to a pool that cannot be placed, least recently
  used first, only down to their min_actors, never when busy, and never in vain;
- plan_on_nodes: a CPU pool sized by default goes one actor per node, on its cores.
"""

from __future__ import annotations

import pytest

from hybrid_infer.pool.leases import LeaseBook
from hybrid_infer.pool.placement import NodeView, plan_on_nodes, runs_on_node_cores
from hybrid_infer.pool.pressure import PoolUsage, choose_yielders, shortfall
from hybrid_infer.pool.scaling import IdlePolicy, LoadPolicy, LoadSample, idle_for
from hybrid_infer.transport.busy import BusyTime


class Clock:
    def __init__(self, now: float = 1000.0):
        self.now = now

    def __call__(self) -> float:
        return self.now


def run(policy: LoadPolicy, clock: Clock, actors: int, utilization: float, *,
        leases: int = 1, seconds: float, step: float = 2.0) -> list[int]:
    """Samples every `step` seconds for `seconds`, applying each decision; the sizes."""
    sizes = []
    for _ in range(int(seconds / step)):
        clock.now += step
        actors = policy.decide(LoadSample(actors, utilization, leases))
        sizes.append(actors)
    return sizes


def test_a_busy_pool_grows_one_actor_at_a_time_up_to_its_ceiling():
    clock = Clock()
    policy = LoadPolicy(floor=1, ceiling=3, up_after_s=6, clock=clock)
    sizes = run(policy, clock, 1, 0.95, seconds=40)
    # busy from the first sample (2 s): one more actor once that lasted 6 s, then a
    # full window again from the first busy sample after the change
    assert sizes[:4] == [1, 1, 1, 2]
    assert sizes.index(3) == 7
    assert sizes[-1] == 3 and max(sizes) == 3  # never past the ceiling


def test_a_pool_without_leases_or_below_the_threshold_does_not_grow():
    clock = Clock()
    policy = LoadPolicy(floor=1, ceiling=4, clock=clock)
    assert set(run(policy, clock, 1, 0.95, leases=0, seconds=60)) == {1}
    assert set(run(policy, clock, 1, 0.80, seconds=60)) == {1}
    no_ceiling = LoadPolicy(floor=1, ceiling=None, clock=clock)
    assert set(run(no_ceiling, clock, 1, 1.0, seconds=60)) == {1}


def test_a_grown_pool_shrinks_back_to_its_floor_when_load_falls_without_thrashing():
    clock = Clock()
    policy = LoadPolicy(floor=1, ceiling=3, down_after_s=60, clock=clock)
    sizes = run(policy, clock, 3, 0.2, seconds=200)
    assert sizes[:29] == [3] * 29  # a full minute of low load before the first step
    assert sizes[-1] == 1 and min(sizes) == 1  # never below the floor
    # load that flickers around the thresholds changes nothing
    clock2 = Clock()
    flicker = LoadPolicy(floor=1, ceiling=3, clock=clock2)
    size = 2
    for n in range(100):
        clock2.now += 2
        size = flicker.decide(LoadSample(size, 0.9 if n % 2 else 0.4, 1))
        assert size == 2


def test_a_change_restarts_both_windows():
    clock = Clock()
    policy = LoadPolicy(floor=1, ceiling=3, up_after_s=6, clock=clock)
    run(policy, clock, 1, 0.95, seconds=4)
    policy.changed()  # e.g. a heal or a scale-up for a job elsewhere
    assert run(policy, clock, 1, 0.95, seconds=4) == [1, 1]


def test_the_idle_policy_scales_down_only_without_leases_past_the_timeout():
    idle = IdlePolicy(idle_timeout_s=60, min_actors=1)
    assert idle.should_scale_down(actors=2, leases=0, idle_s=61)
    assert not idle.should_scale_down(actors=2, leases=1, idle_s=1e6)
    assert not idle.should_scale_down(actors=2, leases=0, idle_s=59)
    assert not idle.should_scale_down(actors=1, leases=0, idle_s=1e6)  # at min_actors
    assert not IdlePolicy(0, 0).should_scale_down(actors=2, leases=0, idle_s=1e9)
    assert IdlePolicy(3600, 0).check_period_s() == 30 and IdlePolicy(2, 0).check_period_s() == 1
    assert idle_for(100, last_used=10, last_change=50, last_lease_end=40) == 50


def test_a_task_lease_ends_the_plan_leases_that_waited_for_it():
    clock = Clock()
    book = LeaseBook(clock)
    book.hold("plan-a", 120)
    clock.now += 5
    book.hold("task-1", 30)
    book.end_plans("plan-")
    assert book.active() == 1 and book.last_end == clock.now
    book.release("task-1")
    assert book.active() == 0


def usage(name, *, actors=1, min_actors=0, cpu=1.0, gpu=0.0, leases=0, held=0,
          last_active=0.0):
    return PoolUsage(name, "torchvision:resnet18", actors, min_actors,
                     {"CPU": cpu, "GPU": gpu}, leases, held, last_active)


def test_idle_pools_yield_least_recently_used_first_and_only_what_is_missing():
    pools = [usage("recent", last_active=300), usage("oldest", last_active=100),
             usage("middle", last_active=200)]
    missing = shortfall({"CPU": 1.0, "GPU": 0.0}, 1, {"CPU": 0.0})
    assert missing == {"CPU": 1.0}
    assert choose_yielders(pools, missing) == [("oldest", 1)]
    assert choose_yielders(pools, {"CPU": 2.0}) == [("oldest", 1), ("middle", 1)]


def test_busy_pools_and_min_actors_are_never_taken():
    pools = [usage("leased", leases=1, last_active=0), usage("in-flight", held=2),
             usage("kept", actors=2, min_actors=2), usage("spare", actors=3, min_actors=1,
                                                          last_active=50)]
    assert choose_yielders(pools, {"CPU": 2.0}) == [("spare", 2)]
    assert choose_yielders(pools, {"CPU": 3.0}) == []  # cannot cover it: nobody yields


def test_only_pools_holding_what_is_missing_yield():
    pools = [usage("cpu-only", last_active=0), usage("gpu", gpu=1.0, last_active=10)]
    assert choose_yielders(pools, {"GPU": 1.0}) == [("gpu", 1)]
    assert shortfall({"CPU": 1.0, "GPU": 1.0}, 2, {"CPU": 8.0, "GPU": 1.0}) == {"GPU": 1.0}
    assert shortfall({"CPU": 1.0}, 2, {"CPU": 2.0}) == {}


def test_a_default_cpu_pool_goes_one_actor_per_node_on_its_cores():
    nodes = [NodeView("a", 16, 16), NodeView("b", 8, 8)]
    assert plan_on_nodes(1, nodes, {}) == [("a", 16)]
    assert plan_on_nodes(2, nodes, {}) == [("a", 16), ("b", 8)]
    assert plan_on_nodes(1, nodes, {"a": 1}) == [("b", 8)]  # growth: the next node
    # more actors than nodes (num_actors given): they share their node's cores
    assert plan_on_nodes(4, nodes, {}) == [("a", 8), ("b", 4), ("a", 8), ("b", 4)]
    # a node without a free slot is skipped; with none free, the same order over all
    assert plan_on_nodes(1, [NodeView("a", 2, 0), NodeView("b", 2, 1)], {}) == [("b", 2)]
    assert plan_on_nodes(1, [NodeView("a", 2, 0), NodeView("b", 4, 0)], {"b": 1}) == [("a", 2)]
    assert plan_on_nodes(1, [], {}) == [(None, None)]


@pytest.mark.parametrize("threads, cpus, gpus, expected", [
    (None, None, 0, True), (2, None, 0, False), (None, 0.5, 0, False), (None, None, 1, False)])
def test_which_pools_run_on_their_nodes_cores(threads, cpus, gpus, expected):
    assert runs_on_node_cores(threads, cpus, gpus) is expected


def test_busy_time_counts_the_time_with_any_batch_held():
    clock = Clock(0.0)
    busy = BusyTime(clock)
    busy.enter()
    clock.now = 2.0
    busy.enter()  # a second batch while busy adds no time
    clock.now = 3.0
    busy.leave()
    assert busy.seconds() == 3.0 and busy.held == 1  # the stretch under way counts
    clock.now = 4.0
    busy.leave()
    clock.now = 10.0  # idle
    assert busy.seconds() == 4.0 and busy.held == 0 and busy.held_peak == 2
