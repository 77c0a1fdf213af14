"""The wall-time estimate's schedule: makespans small enough to work out by hand."""

from pathlib import Path

import pytest

from dtmem.experiment.dag import build_plan
from dtmem.experiment.estimate import Job, estimate, node_seconds, simulate

FILE = Path(__file__).resolve().parents[1] / "pipelines" / "experiments" / "metaworld-laptop.yaml"
ONE = {"CPU": 1.0}


def _makespan(jobs: list[Job], cpus: float, max_parallel: int = 99) -> float:
    return max(end for _, end in simulate(jobs, {"CPU": cpus, "GPU": 0.0}, max_parallel).values())


@pytest.mark.parametrize("cpus", [1.0, 2.0])
def test_a_chain_takes_the_sum_on_any_cpus(cpus):
    chain = [Job("a", 10.0, (), ONE), Job("b", 7.0, ("a",), ONE)]
    assert _makespan(chain, cpus) == 17.0


@pytest.mark.parametrize(("cpus", "max_parallel", "expected"), [(1, 9, 17), (2, 9, 10), (2, 1, 17)])
def test_two_independent_nodes_side_by_side_only_with_two_cpus(cpus, max_parallel, expected):
    pair = [Job("a", 10.0, (), ONE), Job("b", 7.0, (), ONE)]
    assert _makespan(pair, cpus, max_parallel) == expected


def test_a_two_cpu_node_waits_for_both_and_a_later_one_cpu_node_overtakes_it():
    jobs = [
        Job("a", 5.0, (), ONE),
        Job("big", 3.0, (), {"CPU": 2.0}),  # does not fit beside a: waits
        Job("c", 4.0, (), ONE),  # fits beside a: starts at once (the runner's scan goes on)
        Job("d", 2.0, ("c",), ONE),  # c ends at 4: d starts then, beside a, before big
    ]
    times = simulate(jobs, {"CPU": 2.0}, max_parallel=9)
    assert times == {"a": (0, 5), "c": (0, 4), "d": (4, 6), "big": (6, 9)}


def test_an_ask_larger_than_the_machine_runs_alone_instead_of_waiting_forever():
    jobs = [Job("huge", 3.0, (), {"CPU": 8.0, "GPU": 1.0}), Job("b", 2.0, (), ONE)]
    assert simulate(jobs, {"CPU": 2.0, "GPU": 0.0}, 9) == {"huge": (0, 3), "b": (3, 5)}


def test_a_cached_node_costs_nothing_and_holds_no_cpus():
    jobs = [
        Job("a", 5.0, (), ONE),
        Job("hit", 50.0, (), {"CPU": 2.0}, cached=True),
        Job("b", 4.0, ("hit",), ONE),  # ready in the same scan: beside a
    ]
    assert simulate(jobs, {"CPU": 2.0}, 9) == {"a": (0, 5), "hit": (0, 0), "b": (0, 4)}


def test_a_job_whose_upstream_is_missing_is_refused():
    with pytest.raises(ValueError, match="stalled"):
        simulate([Job("b", 1.0, ("nowhere",), ONE)], {"CPU": 2.0}, 9)


def test_the_laptop_plan_on_one_two_and_no_cpus_to_spare():
    plan = build_plan(FILE)
    one, two = estimate(plan, cpus=1), estimate(plan, cpus=2)
    assert one.wall_s == pytest.approx(one.node_s) and two.node_s == one.node_s
    assert one.node_s / 2 <= two.wall_s < 0.6 * one.node_s, (two.wall_s, one.node_s)
    assert (two.cpus, two.to_run, two.unknown) == (2.0, len(plan.nodes), [])
    # the collection asks for both CPUs and every other node reads its data: caching it
    # takes exactly its cost off the wall time and the node time
    collect = plan.nodes["collect/ml10"]
    cached = estimate(plan, [collect.name], cpus=2)
    cost = node_seconds(plan, collect)
    assert cost is not None and cost > 0
    assert cached.wall_s == pytest.approx(two.wall_s - cost)
    assert cached.node_s == pytest.approx(two.node_s - cost) and cached.to_run == two.to_run - 1
    everything = estimate(plan, list(plan.nodes), cpus=2)
    assert (everything.wall_s, everything.node_s, everything.to_run) == (0.0, 0.0, 0)
