"""The plan's wall-time estimate: a per-node cost model, and the runner's schedule over it.

Per node, from its own config:

    collect    start-up + tasks x episodes x max_steps / COLLECT_ENV_STEPS_PER_S
    pretrain   start-up + max_steps x batch_size x context / TRAIN_TOKENS_PER_S[memory?]
    finetune   the same, with the pretrained arm's model (frozen: start-up only)
    evaluate   start-up + tasks x episodes x max_steps / EVAL_ENV_STEPS_PER_S
    probe      start-up

Episodes are counted at their step limit (a conservative bound: Meta-World episodes run to
it unless they fail early). Nodes with no rate (Atari evaluations, DQN Replay imports,
sweeps) are listed and cost 0; cached nodes (``skip``) cost 0.

The wall time is the makespan of the runner's schedule (``dtmem.experiment.runner``),
replayed on those costs by ``simulate``: nodes in plan order, each started as soon as its
upstream nodes are done and the CPUs/GPUs it asks for (capped at the machine's) are free,
a later ready node overtaking an earlier one that does not fit, at most ``max_parallel`` in
flight; a cached node finishes as the scan reaches it. The machine is a local Ray instance:
``os.cpu_count()`` CPUs, no GPUs (a cluster of ``RAY_ADDRESS`` is not looked at). On two
cores two 1-CPU nodes run side by side, each at the rate below: those rates were measured
one node at a time with the machine otherwise busy, so a neighbour node is taken to cost
what that other work cost. Nodes whose threads use more than the CPU they ask for (a
Torch training step, a MuJoCo env pool) slow each other more than that; the sum over nodes
(``Estimate.node_s``, what one at a time takes) is printed beside the makespan as the
bound on that side. The rates are those of the laptop study's model sizes and configs on
the machine named below; another machine, or the paper's model sizes, gives other rates
(the estimate then says what these constants would give, no more).
"""

from __future__ import annotations

import heapq
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from dtmem.experiment.dag import Node, Plan
from dtmem.experiment.runner import _fits, fit_resources

__all__ = ["Estimate", "Job", "estimate", "node_seconds", "simulate"]

# Measured on the 2-core development machine (no GPU; other sessions' work on it at the same
# time, as a laptop has its own) on 2026-11-30 with benchmarks/bench_laptop_costs.py: each
# rate from two whole stage runs of different sizes with the laptop study's own configs
# (pipelines/configs/metaworld-laptop/), the start-up the median of their intercepts (a Ray
# task, an MLflow run, the stage's set-up). Two runs gave train 2039 / 2020 (DT-Mem) and
# 3036 / 3003 (DT) tokens/s, eval 242 / 263 env steps/s, start-up 6.3 / 5.8 s: the slower
# is kept. A third run, with the machine busier still, gave 1309 / 2038 tokens/s, 152 env
# steps/s and collect 983 env steps/s (the only collect figure: the first two runs lacked
# a warm-up): on a machine shared that way the study takes up to ~1.5x the estimate.
COLLECT_ENV_STEPS_PER_S = 980.0  # noisy scripted expert, 2 actors x 4 envs
TRAIN_TOKENS_PER_S = {"memory": 2020.0, "plain": 3000.0}  # in-process training, one worker
EVAL_ENV_STEPS_PER_S = 240.0  # one worker, 10 envs, DT-Mem policy
NODE_STARTUP_S = 6.3
METAWORLD_EPISODE_STEPS = 500  # MT1's truncation, where a config leaves max_steps null


def _train_s(cfg: Any, memory: bool) -> float:
    tokens = cfg.optim.max_steps * cfg.data.batch_size * cfg.data.context
    return tokens / TRAIN_TOKENS_PER_S["memory" if memory else "plain"]


def node_seconds(plan: Plan, node: Node) -> float | None:
    """The node's estimated wall time on this machine; None where the model has no rate
    (Atari evaluations, DQN Replay imports, sweeps)."""
    cfg: Any = node.config
    if node.stage == "collect":
        if cfg.suite != "metaworld":
            return None
        limit = cfg.max_steps or METAWORLD_EPISODE_STEPS  # null: the env's own limit
        steps = len(cfg.tasks) * cfg.episodes_per_task * limit
        return NODE_STARTUP_S + steps / COLLECT_ENV_STEPS_PER_S
    if node.stage == "pretrain":
        return NODE_STARTUP_S + _train_s(cfg, cfg.model.memory is not None)
    if node.stage == "finetune":
        if cfg.mode == "frozen":
            return NODE_STARTUP_S
        pre: Any = plan.nodes[node.upstream[0]].config
        return NODE_STARTUP_S + _train_s(cfg, pre.model.memory is not None)
    if node.stage == "evaluate":
        mw = cfg.metaworld
        if mw is None or isinstance(mw.tasks, str):
            return None
        return NODE_STARTUP_S + len(mw.tasks) * mw.episodes * mw.max_steps / EVAL_ENV_STEPS_PER_S
    if node.stage in ("probe", "dataset"):
        return NODE_STARTUP_S
    return None


@dataclass(frozen=True)
class Job:
    """One node as the schedule sees it: its cost, what it waits for, what it asks for."""

    name: str
    seconds: float
    upstream: tuple[str, ...]
    ask: Mapping[str, float]  # {"CPU": n, "GPU": g}, as Node.resources
    cached: bool = False  # found in the cache: finishes when the scan reaches it, holds nothing


def simulate(
    jobs: Iterable[Job], capacity: Mapping[str, float], max_parallel: int
) -> dict[str, tuple[float, float]]:
    """name -> (start, end) seconds of the runner's schedule of ``jobs`` (in plan order).

    The runner's loop (``runner._schedule``) on simulated time: scan the pending jobs in
    order; one whose upstream jobs are not all done waits; a cached one is done now; another
    starts now if nothing runs, or if fewer than ``max_parallel`` run and its ask (capped at
    ``capacity``: ``fit_resources``) fits beside theirs. Then time moves to the next end,
    every job ending then is done, and the scan repeats.
    """
    pending = list(jobs)
    cap = dict(capacity)
    times: dict[str, tuple[float, float]] = {}
    done: set[str] = set()
    running: list[tuple[float, int, str, dict[str, float]]] = []  # heap of (end, seq, ...)
    used: dict[str, float] = {}
    now, seq = 0.0, 0
    while pending or running:
        for job in list(pending):
            if any(u not in done for u in job.upstream):
                continue  # an upstream job is pending or running
            if job.cached:
                pending.remove(job)
                times[job.name] = (now, now)
                done.add(job.name)
                continue
            need = fit_resources(dict(job.ask), cap)
            if running and (len(running) >= max_parallel or not _fits(need, used, cap)):
                continue
            pending.remove(job)
            for k, v in need.items():
                used[k] = used.get(k, 0.0) + v
            heapq.heappush(running, (now + job.seconds, seq, job.name, need))
            times[job.name] = (now, now + job.seconds)
            seq += 1
        if not running:
            if pending:  # an upstream that is not a job, or a cycle: a plan never has one
                raise ValueError(f"schedule stalled with {[j.name for j in pending]} pending")
            break
        now = running[0][0]
        while running and running[0][0] <= now:
            _, _, name, need = heapq.heappop(running)
            done.add(name)
            for k, v in need.items():
                used[k] -= v
    return times


@dataclass(frozen=True)
class Estimate:
    """The plan's estimated wall time on this machine."""

    wall_s: float  # the makespan of the runner's schedule on ``cpus`` CPUs
    node_s: float  # the sum over the nodes to run: the wall time one at a time
    cpus: float  # the CPUs the schedule had
    to_run: int  # nodes not cached
    unknown: list[str]  # nodes to run with no rate (counted as 0 s)


def estimate(
    plan: Plan,
    skip: Iterable[str] = (),
    *,
    cpus: float | None = None,
    gpus: float = 0.0,
) -> Estimate:
    """The wall time of running ``plan`` here, the nodes in ``skip`` cached; ``cpus``: the
    local Ray instance's (``os.cpu_count()``), ``gpus``: none unless given."""
    skipped = set(skip)
    capacity = {"CPU": float(cpus if cpus is not None else os.cpu_count() or 1), "GPU": gpus}
    jobs, unknown = [], []
    for node in plan.nodes.values():
        cached = node.name in skipped
        seconds = 0.0 if cached else node_seconds(plan, node)
        if seconds is None:
            unknown.append(node.name)
        jobs.append(Job(node.name, seconds or 0.0, node.upstream, dict(node.resources), cached))
    max_parallel = plan.spec.resources.max_parallel or max(1, len(plan.nodes))
    times = simulate(jobs, capacity, max_parallel)
    return Estimate(
        wall_s=max((end for _, end in times.values()), default=0.0),
        node_s=sum(j.seconds for j in jobs),
        cpus=capacity["CPU"],
        to_run=sum(1 for j in jobs if not j.cached),
        unknown=unknown,
    )
