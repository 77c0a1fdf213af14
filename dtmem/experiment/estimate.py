"""The plan's wall-time estimate: a per-node cost model from each node's own config.

    collect    start-up + tasks x episodes x max_steps / COLLECT_ENV_STEPS_PER_S
    pretrain   start-up + max_steps x batch_size x context / TRAIN_TOKENS_PER_S[memory?]
    finetune   the same, with the pretrained arm's model (frozen: start-up only)
    evaluate   start-up + tasks x episodes x max_steps / EVAL_ENV_STEPS_PER_S
    probe      start-up

Episodes are counted at their step limit (a conservative bound: Meta-World episodes run to
it unless they fail early). The total is the sum over nodes that are not cached: on two
cores the runner runs nodes one after another (two small ones side by side at best), so
the sum is what a laptop waits. The rates are those of the laptop study's model sizes and
configs on the machine named below; another machine, or the paper's model sizes, gives
other rates (the estimate then says what these constants would give, no more).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from dtmem.experiment.dag import Node, Plan

__all__ = ["estimate_seconds", "node_seconds"]

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
        steps = len(cfg.tasks) * cfg.episodes_per_task * cfg.max_steps
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


def estimate_seconds(plan: Plan, skip: Iterable[str] = ()) -> tuple[float, list[str]]:
    """(the sum of the estimates of every node not in ``skip``, the nodes with none)."""
    skipped = set(skip)
    total, unknown = 0.0, []
    for node in plan.nodes.values():
        if node.name in skipped:
            continue
        seconds = node_seconds(plan, node)
        if seconds is None:
            unknown.append(node.name)
        else:
            total += seconds
    return total, unknown
