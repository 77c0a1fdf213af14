"""The evaluation pipeline: work units and seeds, aggregation against hand computations,
Ray actors on Meta-World and Atari with exact episode counts, a killed actor replaced without
losing or double-counting an episode, MLflow metrics and artifacts read back, and bad input
refused before any actor starts."""

from __future__ import annotations

import csv
import io
import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import yaml
from typer.testing import CliRunner

import dtmem.evaluation as evaluation
from dtmem.cli import app
from dtmem.config.base import ConfigError, load_config
from dtmem.config.evaluate import EvaluateConfig
from dtmem.config.model import MemoryConfig, ModelConfig
from dtmem.config.tracking import TrackingConfig
from dtmem.data.windows import StateStats
from dtmem.dt_policy import IncompatibleModelError, InvalidTargetError
from dtmem.envs import env_spec
from dtmem.envs.atari import UnknownGameError, make_atari_env
from dtmem.envs.metaworld import ML45_TEST_TASKS, UnknownTaskError, make_metaworld_env
from dtmem.eval_worker import CRASH_MARKER_ENV
from dtmem.evaluation import (
    DuplicateTaskError,
    EvalResult,
    EvaluationError,
    EvalWorker,
    ModelPayload,
    TaskRequest,
    aggregate,
    check_requests,
    episode_seed,
    evaluate,
    make_units,
    requests_from_config,
)
from dtmem.metrics import (
    EVAL_IQM_HUMAN,
    EVAL_IQM_HUMAN_HIGH,
    EVAL_IQM_HUMAN_LOW,
    EVAL_SUCCESS_RATE_MEAN,
    eval_metric,
)
from dtmem.model import build_model
from dtmem.rollout import EpisodeStats
from dtmem.scores import dqn_normalized_score, human_normalized_score, iqm
from dtmem.tracking import start_run
from dtmem.training.checkpoint import export_model
from pipelines.evaluate import (
    CHECKPOINT_RUN_TAG,
    EPISODES_ARTIFACT,
    PLOT_ARTIFACT,
    TABLE_ARTIFACT,
    run_evaluate,
)

# --------------------------------------------------------------------------- builders


def _meta_config() -> ModelConfig:
    return ModelConfig(
        encoder="vector",
        obs_dim=39,
        act_dim=4,
        return_scale=100.0,
        context=5,
        n_layer=1,
        n_head=2,
        d_model=14,
        dropout=0.0,
        memory=MemoryConfig(slots=7, heads=1),
    )


def _atari_config(num_actions: int = 18) -> ModelConfig:
    return ModelConfig(
        encoder="conv",
        action_kind="discrete",
        num_actions=num_actions,
        returns="atari_bins",
        context=3,
        n_layer=1,
        n_head=2,
        d_model=14,
        dropout=0.0,
        memory=MemoryConfig(slots=7, heads=1),
    )


def _stats() -> StateStats:
    rng = np.random.default_rng(3)
    return StateStats(mean=rng.normal(0, 0.2, 39), std=rng.uniform(0.5, 1.5, 39), count=11)


def _export(path: Path, cfg: ModelConfig, stats: StateStats | None, meta: dict[str, Any]) -> Path:
    torch.manual_seed(0)
    return export_model(
        path, model=build_model(cfg), model_config=cfg, state_stats=stats, meta=meta
    )


def _payload(cfg: ModelConfig, stats: StateStats | None = None) -> ModelPayload:
    torch.manual_seed(0)
    return ModelPayload.of(build_model(cfg), cfg, stats)


def _tracking(tmp: Path) -> TrackingConfig:
    return TrackingConfig(
        uri=f"sqlite:///{tmp / 'mlflow.db'}", experiment="t", system_metrics=False
    )


def _returns(result: EvalResult, task: str) -> list[float]:
    return [e.episode_return for e in result.task(task).episodes]


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """A tracking store holding a 'pretrain' run whose artifact 'checkpoint' is a tiny
    Meta-World model (with state statistics), as the training stage logs it."""
    root = tmp_path_factory.mktemp("eval_store")
    tracking = _tracking(root)
    with start_run(tracking, stage="pretrain") as run:
        model_dir = _export(root / "model", _meta_config(), _stats(), {"step": 37})
        run.log_artifact(model_dir, "checkpoint")
    return {"root": root, "tracking": tracking, "run_id": run.run_id, "dir": model_dir}


def _meta_cfg(store: dict[str, Any], **kw: Any) -> EvaluateConfig:
    data: dict[str, Any] = {
        "checkpoint": f"runs:/{store['run_id']}",
        "metaworld": {"tasks": ["reach-v3"], "episodes": 5, "target_return": 300.0, "max_steps": 9},
        "num_actors": 2,
        "envs_per_actor": 2,
        "seed": 4,
        "tracking": store["tracking"].model_dump(),
    }
    data.update(kw)
    return EvaluateConfig.model_validate(data)


# --------------------------------------------------------------------------- pure parts


def test_units_cover_every_episode_once_with_seeds_independent_of_chunking() -> None:
    reqs = [
        TaskRequest("metaworld", "reach-v3", 7, 10, 1.0),
        TaskRequest("atari", "Pong", 3, 10, None),
    ]
    for chunk in (1, 3, 5, 16):
        units = make_units(reqs, seed=11, chunk=chunk)
        for r in reqs:
            mine = [u for u in units if u.request == r]
            covered = [u.first + j for u in mine for j in range(u.count)]
            assert covered == list(range(r.episodes))
            assert all(1 <= u.count <= chunk for u in mine)
            # rollout gives episode first + j the seed env_seed + j
            seeds = [u.env_seed + j for u in mine for j in range(u.count)]
            assert seeds == [episode_seed(11, r.task, e) for e in range(r.episodes)]
    assert episode_seed(11, "reach-v3", 0) != episode_seed(12, "reach-v3", 0)
    assert episode_seed(11, "reach-v3", 0) != episode_seed(11, "push-v3", 0)
    assert 0 <= episode_seed(2**40, "x", 0) < 2**30
    with pytest.raises(ValueError, match="chunk"):
        make_units(reqs, seed=0, chunk=0)


def test_env_spec_matches_the_real_envs() -> None:
    atari = make_atari_env("Pong", 1, num_threads=1)
    meta = make_metaworld_env("reach-v3", 1)
    try:
        assert env_spec("atari", "Pong") == atari.spec
        assert env_spec("metaworld", "reach-v3") == meta.spec
    finally:
        atari.close()
        meta.close()


def _ep(e: int, ret: float, success: bool | None = None, length: int = 5) -> EpisodeStats:
    return EpisodeStats(e, 100 + e, ret, length, success, False)


def test_aggregate_against_hand_computation() -> None:
    reqs = [
        TaskRequest("atari", "Pong", 4, 50, None),
        TaskRequest("atari", "Alien", 2, 50, None),
        TaskRequest("atari", "MontezumaRevenge", 3, 50, None),  # DQN-normalised undefined
        TaskRequest("metaworld", "reach-v3", 4, 50, 10.0),
        TaskRequest("metaworld", "push-v3", 3, 50, 10.0),
    ]
    pong = [-21.0, -19.0, -20.0, -15.0]
    by_task = {
        "Pong": [_ep(i, r) for i, r in reversed(list(enumerate(pong)))],  # any order
        "Alien": [_ep(0, 300.0, length=7), _ep(1, 500.0, length=9)],
        "MontezumaRevenge": [_ep(i, 0.0) for i in range(3)],
        "reach-v3": [_ep(i, 1.0, s) for i, s in enumerate([True, False, True, True])],
        "push-v3": [_ep(i, 1.0, False) for i in range(3)],
    }
    res = aggregate(reqs, by_task, wall_s=2.0, bootstrap_resamples=200)
    p = res.task("Pong")
    assert [e.episode for e in p.episodes] == [0, 1, 2, 3]
    assert p.return_mean == pytest.approx(np.mean(pong))
    assert p.return_top3 == pytest.approx(np.mean([-15.0, -19.0, -20.0]))
    assert p.human_normalized == pytest.approx(human_normalized_score("Pong", np.mean(pong)))
    assert p.dqn_normalized == pytest.approx(dqn_normalized_score("Pong", np.mean(pong)))
    a = res.task("Alien")
    assert a.return_top3 == pytest.approx(400.0)  # fewer than 3 episodes: all of them
    assert a.length_mean == pytest.approx(8.0)
    assert res.task("MontezumaRevenge").dqn_normalized is None
    assert res.task("reach-v3").success_rate == pytest.approx(0.75)
    assert res.task("reach-v3").human_normalized is None
    assert res.success_rate_mean == pytest.approx((0.75 + 0.0) / 2)
    hn = [res.task(g).human_normalized for g in ("Pong", "Alien", "MontezumaRevenge")]
    assert res.iqm_human_normalized is not None and res.iqm_dqn_normalized is not None
    assert res.iqm_human_normalized.point == pytest.approx(iqm(hn))
    assert res.iqm_human_normalized.low <= res.iqm_human_normalized.point
    assert res.iqm_human_normalized.point <= res.iqm_human_normalized.high
    dq = [res.task(g).dqn_normalized for g in ("Pong", "Alien")]
    assert res.iqm_dqn_normalized.point == pytest.approx(iqm(dq))
    assert res.env_steps == 4 * 5 + 16 + 3 * 5 + 4 * 5 + 3 * 5
    assert res.steps_per_s == pytest.approx(res.env_steps / 2.0)

    metrics = evaluation.metrics_of(res)
    assert metrics[eval_metric("Pong", "score_normalized")] == pytest.approx(p.human_normalized)
    assert metrics[eval_metric("Pong", "score_dqn_normalized")] == pytest.approx(p.dqn_normalized)
    assert eval_metric("MontezumaRevenge", "score_dqn_normalized") not in metrics
    assert metrics[eval_metric("push-v3", "success_rate")] == 0.0
    assert metrics[EVAL_SUCCESS_RATE_MEAN] == pytest.approx(0.375)
    assert all(math.isfinite(v) for v in metrics.values())


@pytest.mark.parametrize(
    "episodes",
    [
        [_ep(0, 1.0, True), _ep(1, 1.0, True)],  # one missing
        [_ep(0, 1.0, True), _ep(1, 1.0, True), _ep(1, 1.0, True), _ep(2, 1.0, True)],  # twice
    ],
)
def test_aggregate_refuses_wrong_episode_sets(episodes: list[EpisodeStats]) -> None:
    req = TaskRequest("metaworld", "reach-v3", 3, 50, 10.0)
    with pytest.raises(EvaluationError, match=r"reach-v3: expected episodes 0\.\.2"):
        aggregate([req], {"reach-v3": episodes}, wall_s=1.0)


def test_requests_from_config_resolves_names() -> None:
    cfg = EvaluateConfig.model_validate(
        {
            "checkpoint": "x",
            "atari": {"games": ["ms_pacman", "Pong"], "episodes": 3, "max_steps": 7},
            "metaworld": {"tasks": "ml45_test", "target_return": 5.0},
        }
    )
    reqs = requests_from_config(cfg)
    assert [r.task for r in reqs] == ["MsPacman", "Pong", *ML45_TEST_TASKS]
    assert reqs[0] == TaskRequest("atari", "MsPacman", 3, 7, None)
    assert reqs[-1] == TaskRequest("metaworld", ML45_TEST_TASKS[-1], 20, 500, 5.0)

    def cfg_with(**kw: Any) -> EvaluateConfig:
        return EvaluateConfig.model_validate({"checkpoint": "x", **kw})

    with pytest.raises(UnknownGameError, match=r"'Pongg'; valid games: Alien, .*Zaxxon"):
        requests_from_config(cfg_with(atari={"games": ["Pongg"]}))
    with pytest.raises(UnknownTaskError, match=r"'reach-v9'; valid tasks: .*reach-v3"):
        requests_from_config(cfg_with(metaworld={"tasks": ["reach-v9"], "target_return": 1.0}))
    with pytest.raises(DuplicateTaskError, match="Pong"):
        requests_from_config(cfg_with(atari={"games": ["Pong", "pong"]}))


def test_check_requests_refuses_models_that_do_not_fit() -> None:
    atari_spec = build_model(_atari_config()).spec
    meta_spec = build_model(_meta_config()).spec
    reach = TaskRequest("metaworld", "reach-v3", 1, 5, 10.0)
    pong = TaskRequest("atari", "Pong", 1, 5, None)
    check_requests(meta_spec, _stats(), [reach])
    check_requests(atari_spec, None, [pong])
    with pytest.raises(IncompatibleModelError, match="reach-v3: model observations"):
        check_requests(atari_spec, None, [reach])
    with pytest.raises(IncompatibleModelError, match="Pong: model has 5 actions, the env 18"):
        check_requests(build_model(_atari_config(num_actions=5)).spec, None, [pong])
    with pytest.raises(InvalidTargetError, match="finite"):
        check_requests(meta_spec, None, [TaskRequest("metaworld", "reach-v3", 1, 5, math.nan)])
    with pytest.raises(InvalidTargetError, match="return head"):
        check_requests(meta_spec, None, [TaskRequest("metaworld", "reach-v3", 1, 5, None)])


def test_config_refuses_nan_target_and_empty_request(tmp_path: Path) -> None:
    path = tmp_path / "eval.yaml"
    path.write_text(
        yaml.safe_dump(
            {"checkpoint": "x", "metaworld": {"tasks": ["reach-v3"], "target_return": 1.0}}
        )
    )
    assert load_config(EvaluateConfig, path).metaworld is not None
    with pytest.raises(ConfigError, match=r"metaworld.target_return: .*finite"):
        load_config(EvaluateConfig, path, ["metaworld.target_return=.nan"])
    with pytest.raises(ConfigError, match="nothing to evaluate"):
        load_config(EvaluateConfig, path, ["metaworld=null"])
    with pytest.raises(ConfigError, match="num_actorz: unknown field"):
        load_config(EvaluateConfig, path, ["num_actorz=3"])


def test_scheduler_keeps_a_worker_on_its_task_and_spreads_new_workers() -> None:
    """A free worker takes its own task's next unit; a fresh one an unstarted task's."""
    reqs = [TaskRequest("metaworld", t, 4, 5, 1.0) for t in ("reach-v3", "push-v3")]
    take = evaluation._scheduler(make_units(reqs, seed=0, chunk=2))
    a, b = take(None), take(None)
    assert a is not None and b is not None
    assert (a.key, b.key) == (("reach-v3", 0), ("push-v3", 0))
    c = take("push-v3")
    assert c is not None and c.key == ("push-v3", 2)
    d = take("push-v3")  # push-v3 has none left: the first queued unit
    assert d is not None and d.key == ("reach-v3", 2)
    assert take(None) is None


def test_config_takes_a_checkpoint_or_a_baseline_not_both(store: dict[str, Any]) -> None:
    baseline = {"kind": "nearest_neighbour", "data": {"datasets": [{"id": "tt/demo-v0"}]}}
    assert _meta_cfg(store, checkpoint=None, baseline=baseline).baseline is not None
    with pytest.raises(ValueError, match="exactly one of checkpoint"):
        _meta_cfg(store, baseline=baseline)
    with pytest.raises(ValueError, match="exactly one of checkpoint"):
        _meta_cfg(store, checkpoint=None)


def test_nearest_neighbour_baseline_is_evaluated_like_a_model(
    store: dict[str, Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The baseline hook: no checkpoint, demonstrations from a dataset; a small evaluation
    runs in this process (no Ray running here), tracked like a model's."""
    from mlflow.tracking import MlflowClient

    from dtmem.data.synthetic import write_metaworld_like
    from pipelines.evaluate import BASELINE_TAG

    monkeypatch.setattr(evaluation, "_ray_running", lambda: False)
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    write_metaworld_like(tmp_path / "ds", "tt/reachdemo-v0", "reach-v3", episodes=3, steps=7)
    data = {"datasets": [{"id": "tt/reachdemo-v0"}], "root": str(tmp_path / "ds")}
    cfg = _meta_cfg(store, checkpoint=None, baseline={"kind": "nearest_neighbour", "data": data})
    result = run_evaluate(cfg)
    assert result.actors == 1  # in this process: 45 env steps buy no Ray
    t = result.task("reach-v3")
    assert [e.episode for e in t.episodes] == [0, 1, 2, 3, 4] and result.env_steps == 45
    run = MlflowClient(tracking_uri=store["tracking"].uri).get_run(result.run_id)
    assert run.data.tags[BASELINE_TAG] == "nearest_neighbour:tt/reachdemo-v0"
    assert run.data.metrics[eval_metric("reach-v3", "episodes")] == 5
    with pytest.raises(IncompatibleModelError, match="39-dim states"):
        evaluation.BaselinePayload(_demos(obs_dim=39)).check(
            [TaskRequest("atari", "Pong", 1, 5, None)]
        )


def _demos(obs_dim: int) -> Any:
    from dtmem.baselines import fit_demonstrations
    from dtmem.data.episodes import Episode

    obs = np.zeros((3, obs_dim), np.float32)
    ep = Episode(obs, np.zeros((2, 4), np.float32), np.zeros(2, np.float32),
                 np.zeros(2, bool), np.array([False, True]), {})  # fmt: skip
    return fit_demonstrations([ep])


def test_worker_without_ray_is_deterministic_per_unit() -> None:
    """The same unit gives the same episodes on a fresh worker (what a retry relies on)."""
    payload = _payload(_meta_config(), _stats())
    req = TaskRequest("metaworld", "reach-v3", 4, 6, 200.0)
    first, second = make_units([req], seed=2, chunk=2)
    w1, w2 = EvalWorker(payload), EvalWorker(payload)
    try:
        w1.run(first)
        a = w1.run(second)  # on the envs the first chunk used
        b = w2.run(second)  # on fresh envs
    finally:
        w1.close()
        w2.close()
    assert a.key == ("reach-v3", 2) and [e.episode for e in a.episodes] == [2, 3]
    assert w1.envs.builds == 1  # warm: the second chunk ran on the first chunk's envs
    assert a.episodes == b.episodes
    assert [e.seed for e in a.episodes] == [episode_seed(2, "reach-v3", e) for e in (2, 3)]
    assert all(e.length == 6 and e.truncated for e in a.episodes)


# --------------------------------------------------------------------------- with Ray


@pytest.fixture(scope="module")
def baseline(ray_session: Any, store: dict[str, Any]) -> EvalResult:
    """The pipeline end to end: runs:/ checkpoint, 2 actors, MLflow."""
    return run_evaluate(_meta_cfg(store))


def test_pipeline_exact_episodes_and_mlflow(baseline: EvalResult, store: dict[str, Any]) -> None:
    from mlflow.tracking import MlflowClient

    t = baseline.task("reach-v3")
    assert [e.episode for e in t.episodes] == [0, 1, 2, 3, 4]
    assert [e.seed for e in t.episodes] == [episode_seed(4, "reach-v3", e) for e in range(5)]
    assert all(e.length == 9 for e in t.episodes)  # max_steps cut every episode
    assert baseline.env_steps == 45 and baseline.actors == 2 and baseline.actors_replaced == 0
    assert t.success_rate is not None and 0.0 <= t.success_rate <= 1.0
    assert baseline.run_id is not None

    client = MlflowClient(tracking_uri=store["tracking"].uri)
    run = client.get_run(baseline.run_id)
    assert run.info.status == "FINISHED"
    assert run.data.tags["dtmem.stage"] == "evaluate"
    assert run.data.tags[CHECKPOINT_RUN_TAG] == store["run_id"]  # link to the trained model
    m = run.data.metrics
    assert m[eval_metric("reach-v3", "success_rate")] == pytest.approx(t.success_rate)
    assert m[eval_metric("reach-v3", "return_mean")] == pytest.approx(t.return_mean)
    assert m[eval_metric("reach-v3", "return_top3")] == pytest.approx(t.return_top3)
    assert m[eval_metric("reach-v3", "episodes")] == 5
    assert m[EVAL_SUCCESS_RATE_MEAN] == pytest.approx(t.success_rate)
    history = client.get_metric_history(baseline.run_id, eval_metric("reach-v3", "return_mean"))
    assert [h.step for h in history] == [37]  # the checkpoint's step
    assert run.data.params["metaworld.episodes"] == "5"
    names = {a.path for a in client.list_artifacts(baseline.run_id)}
    assert {TABLE_ARTIFACT, EPISODES_ARTIFACT, PLOT_ARTIFACT, "config.yaml"} <= names
    local = client.download_artifacts(baseline.run_id, TABLE_ARTIFACT, str(store["root"]))
    rows = list(csv.DictReader(io.StringIO(Path(local).read_text())))
    assert [(r["task"], r["episodes"]) for r in rows] == [("reach-v3", "5")]
    assert float(rows[0]["return_mean"]) == pytest.approx(t.return_mean, rel=1e-5)
    png = client.download_artifacts(baseline.run_id, PLOT_ARTIFACT, str(store["root"]))
    assert Path(png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_results_do_not_depend_on_actor_count(baseline: EvalResult, store: dict[str, Any]) -> None:
    loaded = ModelPayload.of(*_load(store["dir"]))
    req = requests_from_config(_meta_cfg(store))
    one = evaluate(loaded, req, num_actors=1, envs_per_actor=2, seed=4)
    assert one.actors == 1
    assert _returns(one, "reach-v3") == _returns(baseline, "reach-v3")


def test_in_process_pool_without_ray_gives_the_same_episodes_and_stays_warm(
    baseline: EvalResult, store: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    """No Ray cluster and a pool of one: the worker runs in this process (Ray would only add
    its start-up); two calls on the same pool reuse its envs."""
    monkeypatch.setattr(evaluation, "_ray_running", lambda: False)
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    loaded = ModelPayload.of(*_load(store["dir"]))
    req = requests_from_config(_meta_cfg(store))
    threads = torch.get_num_threads()
    with evaluation.open_pool(loaded, num_actors=1, envs_per_actor=2) as pool:
        assert pool.in_process
        first = pool.evaluate(req, seed=4)
        second = pool.evaluate(req, seed=4)
        assert pool.pool.worker.envs.builds == 1  # type: ignore[union-attr]
    assert torch.get_num_threads() == threads  # the worker gave the setting back
    # a small evaluation stays in this process even when two workers were asked for
    with evaluation.open_pool(loaded, num_actors=2, envs_per_actor=2, units=3, steps=45) as pool:
        assert pool.in_process
    assert _returns(first, "reach-v3") == _returns(baseline, "reach-v3")
    assert _returns(second, "reach-v3") == _returns(baseline, "reach-v3")


def _load(path: Path) -> tuple[Any, ...]:
    from dtmem.training.checkpoint import load_model_dir

    m = load_model_dir(path)
    return m.model, m.config, m.state_stats


def test_killed_actor_is_replaced_and_episodes_stay_exact(
    baseline: EvalResult, store: dict[str, Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    marker = tmp_path / "crashed"
    monkeypatch.setenv(CRASH_MARKER_ENV, str(marker))  # a test switch, not a config field
    result = run_evaluate(_meta_cfg(store))
    assert marker.exists()  # one actor claimed it and died mid-episode
    assert result.actors_replaced == 1
    t = result.task("reach-v3")
    assert [e.episode for e in t.episodes] == [0, 1, 2, 3, 4]
    assert result.env_steps == 45  # the dead actor's partial episodes count nowhere
    assert _returns(result, "reach-v3") == _returns(baseline, "reach-v3")  # same seeds


def test_too_many_actor_deaths_raise(
    ray_session: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    req = [TaskRequest("metaworld", "reach-v3", 2, 4, 100.0)]
    monkeypatch.setenv(CRASH_MARKER_ENV, str(tmp_path / "m"))
    with pytest.raises(EvaluationError, match="died 1 times"):
        evaluate(_payload(_meta_config()), req, num_actors=1, envs_per_actor=2, max_failures=0)


def test_atari_on_actors(ray_session: Any) -> None:
    """Expert-return sampling on Pong, 5 episodes in chunks of 2; more actors asked for than
    the 2 CPUs can place: the pool is capped (an unplaceable actor would hang its chunk)."""
    req = [TaskRequest("atari", "Pong", 5, 6, None)]
    res = evaluate(_payload(_atari_config()), req, num_actors=5, envs_per_actor=2, seed=1)
    assert res.actors == 2
    t = res.task("Pong")
    assert [e.episode for e in t.episodes] == [0, 1, 2, 3, 4]
    assert all(e.length == 6 and e.success is None for e in t.episodes)
    assert t.human_normalized == pytest.approx(human_normalized_score("Pong", t.return_mean))
    assert res.iqm_human_normalized is not None
    assert res.iqm_human_normalized.point == pytest.approx(t.human_normalized)
    metrics = evaluation.metrics_of(res)
    assert {EVAL_IQM_HUMAN, EVAL_IQM_HUMAN_LOW, EVAL_IQM_HUMAN_HIGH} <= set(metrics)


# --------------------------------------------------------------------------- bad input, CLI


@pytest.fixture
def no_actors(monkeypatch: pytest.MonkeyPatch) -> None:
    """Bad input must be refused before the evaluation (and its actors) starts."""

    def refuse(*args: Any, **kwargs: Any) -> None:
        raise AssertionError("evaluation started despite bad input")

    monkeypatch.setattr(evaluation, "evaluate", refuse)


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["metaworld.tasks=[reach-v3, reach-v9]"], "unknown Meta-World task 'reach-v9'; valid"),
        (["atari={games: [Pongo]}", "metaworld=null"], "unknown Atari game 'Pongo'; valid"),
        (["atari={games: [Pong]}", "metaworld=null"], "Pong: model observations (39,)"),
        (["metaworld.target_return=.nan"], "metaworld.target_return"),
        (["checkpoint=/no/such/dir"], "/no/such/dir: no such checkpoint"),
    ],
)
def test_cli_bad_input_one_line_exit_2(
    no_actors: None, store: dict[str, Any], tmp_path: Path, overrides: list[str], message: str
) -> None:
    path = tmp_path / "eval.yaml"
    cfg = _meta_cfg(store, checkpoint=str(store["dir"]))
    path.write_text(yaml.safe_dump(cfg.model_dump(mode="json")))
    args = ["evaluate", str(path)] + [x for o in overrides for x in ("--set", o)]
    out = CliRunner().invoke(app, args)
    assert out.exit_code == 2, out.output
    # one error line (the CLI may first say what starts), no traceback
    errors = [line for line in out.output.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and "Traceback" not in out.output
    assert message in errors[0]
