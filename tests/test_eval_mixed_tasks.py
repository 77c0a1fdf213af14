"""Meta-World episodes of several tasks side by side in one vector env (issue 16): the same
per-task episodes as one task at a time, with one batched policy call per step."""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import pytest
import torch

from dtmem.evaluation import (
    EvalWorker,
    MixedUnit,
    ModelPayload,
    TaskRequest,
    WorkUnit,
    evaluate,
    make_units,
    mix_units,
    plan_units,
    split_by_task,
)
from dtmem.model import build_model
from dtmem.rollout import EpisodeStats, FunctionPolicy
from tests.test_evaluate import _meta_config

TASKS = ("reach-v3", "push-v3", "drawer-open-v3")


def _payload() -> ModelPayload:
    cfg = _meta_config()
    torch.manual_seed(0)
    return ModelPayload.of(build_model(cfg), cfg, None)


def _requests(episodes: tuple[int, ...], max_steps: int = 20) -> list[TaskRequest]:
    return [
        TaskRequest("metaworld", t, n, max_steps, 300.0 + 7 * i)  # a target per task
        for i, (t, n) in enumerate(zip(TASKS, episodes, strict=True))
    ]


class _CountingPolicy:
    """Wraps a policy; records how many envs each ``act`` call acted for."""

    def __init__(self, policy: Any, batches: list[int]) -> None:
        self.policy, self.batches = policy, batches

    def reset(self, index: int, condition: Any) -> None:
        self.policy.reset(index, condition)

    def act(self, observations: np.ndarray, active: np.ndarray) -> np.ndarray:
        self.batches.append(int(active.sum()))
        return self.policy.act(observations, active)

    def observe(self, rewards: np.ndarray) -> None:
        self.policy.observe(rewards)


def _run(payload: Any, units: list[Any], batches: list[int]) -> dict[str, list[EpisodeStats]]:
    """Every unit on one in-process worker; episodes by task."""
    worker = EvalWorker(payload)
    make = worker.make_policy
    worker.make_policy = lambda env, seed: _CountingPolicy(make(env, seed), batches)
    by_task: dict[str, list[EpisodeStats]] = {t: [] for t in TASKS}
    try:
        for unit in units:
            episodes = iter(worker.run(unit).episodes)
            for part in unit.parts:
                by_task[part.request.task] += [next(episodes) for _ in range(part.count)]
    finally:
        worker.close()
    return by_task


@dataclass(frozen=True)
class _RowPayload:
    """A policy computed one observation at a time, tanh(W s): its actions cannot depend on
    the batch, so mixed and sequential runs must agree to the last bit."""

    weights: np.ndarray  # (4, 39)

    def check(self, requests: Any) -> None:
        pass

    def policy_maker(self, *, greedy: bool) -> Any:
        def act(o: np.ndarray) -> np.ndarray:
            return np.tanh(self.weights @ o).astype(np.float32)

        return lambda env, seed: FunctionPolicy(act)


def test_mixed_tasks_give_each_slot_its_own_task_seed_and_goal_exactly() -> None:
    payload = _RowPayload(np.random.default_rng(0).normal(0, 0.3, (4, 39)))
    reqs = _requests((2, 1, 2), max_steps=20)
    sequential = _run(payload, make_units(reqs, seed=5, chunk=5), [])  # one task at a time
    units = plan_units(reqs, seed=5, chunk=5)
    assert len(units) == 1 and isinstance(units[0], MixedUnit)
    assert units[0].key == ("reach-v3+push-v3+drawer-open-v3", 0)
    mixed = _run(payload, units, [])
    for task in TASKS:
        assert [e.episode for e in mixed[task]] == list(range(len(mixed[task])))
        assert mixed[task] == sequential[task], task  # seeds, returns, lengths, success
    # a slot ran its own task: the tasks' returns differ
    assert len({mixed[t][0].episode_return for t in TASKS}) == 3


def test_mixed_tasks_run_the_model_once_per_step_with_the_sequential_episodes() -> None:
    reqs = _requests((2, 1, 2), max_steps=20)
    seq_batches: list[int] = []
    sequential = _run(_payload(), make_units(reqs, seed=5, chunk=5), seq_batches)
    mixed_batches: list[int] = []
    mixed = _run(_payload(), plan_units(reqs, seed=5, chunk=5), mixed_batches)
    for task in TASKS:
        for m, s in zip(mixed[task], sequential[task], strict=True):
            # The model's kernels round differently at another batch size (a lone row takes
            # a matrix-vector path; ~1e-8 in an action), so returns agree to rounding only.
            assert replace(m, episode_return=0.0) == replace(s, episode_return=0.0), task
            assert m.episode_return == pytest.approx(s.episode_return, rel=1e-6, abs=1e-9)
    # one forward per step for all five envs, against three tasks' worth of steps alone
    assert mixed_batches == [5] * 20
    assert sorted(set(seq_batches)) == [1, 2] and len(seq_batches) == 3 * 20


def test_evaluate_mixes_tasks_and_reports_each_task_as_alone() -> None:
    payload = _RowPayload(np.random.default_rng(1).normal(0, 0.3, (4, 39)))
    reqs = _requests((1, 1, 1), max_steps=12)
    together = evaluate(payload, reqs, num_actors=1, envs_per_actor=3, bootstrap_resamples=10)
    for r in reqs:
        alone = evaluate(payload, [r], num_actors=1, envs_per_actor=3, bootstrap_resamples=10)
        assert together.task(r.task).episodes == alone.task(r.task).episodes, r.task


def _unit(task: str, first: int, count: int, suite: Any = "metaworld", steps: int = 20) -> WorkUnit:
    req = TaskRequest(suite, task, first + count, steps, 1.0)
    return WorkUnit(req, first, count, env_seed=first, policy_seed=0, goal_seed=0)


def test_mix_units_packs_small_metaworld_chunks_only() -> None:
    small = [_unit(f"t{i}", 0, 1) for i in range(7)]
    full = _unit("full", 0, 3)
    atari = _unit("Pong", 0, 1, suite="atari")
    other_cap = _unit("long", 0, 1, steps=500)
    out = mix_units([full, *small, atari, other_cap], chunk=3)
    assert out[:1] == [full] and atari in out and other_cap in out
    mixed = [u for u in out if isinstance(u, MixedUnit)]
    assert [[p.request.task for p in u.parts] for u in mixed] == [
        ["t0", "t1", "t2"],
        ["t3", "t4", "t5"],
    ]
    assert small[6] in out  # the last, alone in its bin, stays a plain unit
    assert sum(u.count for u in out) == 3 + 7 + 1 + 1


def test_mix_units_keeps_a_leftover_of_several_episodes_with_others() -> None:
    units = make_units(_requests((4, 2, 1)), seed=0, chunk=3)  # reach 3+1, push 2, drawer 1
    out = mix_units(units, chunk=3)
    assert [u.count for u in out] == [3, 3, 1]
    assert isinstance(out[1], MixedUnit)
    assert [(p.request.task, p.first, p.count) for p in out[1].parts] == [
        ("reach-v3", 3, 1),
        ("push-v3", 0, 2),
    ]


def test_split_by_task_hands_each_part_its_episodes_and_refuses_a_short_list() -> None:
    units = mix_units(make_units(_requests((2, 1, 1)), seed=0, chunk=4), chunk=4)
    (unit,) = units
    assert [(t, eps) for t, eps in split_by_task(unit, ["a", "b", "c", "d"])] == [
        ("reach-v3", ["a", "b"]),
        ("push-v3", ["c"]),
        ("drawer-open-v3", ["d"]),
    ]
    with pytest.raises(ValueError, match="ran 3 episodes, its parts 4"):
        list(split_by_task(unit, ["a", "b", "c"]))


def test_sweep_evaluation_mixes_tasks_with_each_task_as_alone(
    tmp_path: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    from dtmem.config.sweep import EvaluationConfig
    from dtmem.sweep.trial import evaluate_model
    from dtmem.training.checkpoint import export_model

    cfg = _meta_config()
    torch.manual_seed(0)
    model_dir = export_model(
        tmp_path / "model", model=build_model(cfg), model_config=cfg, state_stats=None, meta={}
    )
    units: list[Any] = []
    run = EvalWorker.run
    monkeypatch.setattr(EvalWorker, "run", lambda self, unit: units.append(unit) or run(self, unit))

    def evaluate_on(tasks: list[str]) -> dict[str, float]:
        ecfg = EvaluationConfig.model_validate(
            {"tasks": tasks, "episodes": 1, "max_steps": 10, "target_return": 300.0, "envs": 4}
        )
        return evaluate_model(model_dir, ecfg)[0]

    together = evaluate_on(list(TASKS))
    assert len(units) == 1 and isinstance(units[0], MixedUnit)  # one batch, not three
    for task in TASKS:
        alone = evaluate_on([task])
        assert {k: v for k, v in together.items() if task in k} == pytest.approx(
            {k: v for k, v in alone.items() if task in k}, rel=1e-6
        )
