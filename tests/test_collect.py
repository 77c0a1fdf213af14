"""Collection: behaviour policies, the episode recorder, and ``dtmem collect`` end to end.

Policies are tested on hand-made arrays; the recorder and the expert on real Meta-World envs
(no Ray); the pipeline with the shared Ray session, writing into tmp_path and logging into a
tmp sqlite MLflow store.
"""

from __future__ import annotations

import io
import re
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from rich.console import Console

from dtmem.collect.actors import record_episodes
from dtmem.collect.policies import (
    EpisodePlan,
    ExpertPolicy,
    RandomPolicy,
    categorical_sample,
    derive_seed,
    epsilon_mix,
    gaussian_noise,
    plan_episodes,
    variant_of,
)
from dtmem.config.base import ConfigError, load_config
from dtmem.config.collect import CollectConfig
from dtmem.data.episodes import DatasetExistsError, DatasetNotFoundError
from dtmem.data.minari_io import DatasetWriter, open_dataset
from dtmem.envs import EnvSpec

SMOKE = Path(__file__).resolve().parents[1] / "pipelines" / "configs" / "smoke" / "collect.yaml"
CONT = EnvSpec("fake", (17,), "continuous", 0, 5, None)  # odd sizes: obs 17, actions 5
DISC = EnvSpec("fake", (17,), "discrete", 7, 0, None)


# --- seeds and plans -------------------------------------------------------------------------


def test_derive_seed_depends_on_every_part_only():
    s = derive_seed(3, "reach-v3", 11, "env")
    assert s == derive_seed(3, "reach-v3", 11, "env")
    others = {
        derive_seed(4, "reach-v3", 11, "env"),
        derive_seed(3, "push-v3", 11, "env"),
        derive_seed(3, "reach-v3", 12, "env"),
        derive_seed(3, "reach-v3", 11, "policy"),
    }
    assert s not in others and len(others) == 4
    assert 0 <= s < 2**31


def test_variants_split_episodes_into_consecutive_blocks():
    assert [variant_of(i, 7, 3) for i in range(7)] == [0, 0, 0, 1, 1, 2, 2]
    assert variant_of(9, 7, 3) == 2  # extra attempts belong to the last
    plans = plan_episodes(0, "t", [5, 6], total=7, variants=3)
    assert [p.index for p in plans] == [5, 6] and [p.variant for p in plans] == [2, 2]
    assert plans[0].env_seed != plans[0].policy_seed


# --- pure transforms ---------------------------------------------------------------------------


def test_epsilon_mix_replaces_rows_where_uniform_below_epsilon():
    actions = np.arange(15, dtype=np.float32).reshape(3, 5)
    random_actions = -np.ones((3, 5), dtype=np.float32)
    out = epsilon_mix(actions, random_actions, np.array([0.1, 0.5, 0.29]), 0.3)
    np.testing.assert_array_equal(out, [random_actions[0], actions[1], random_actions[2]])
    discrete = epsilon_mix(np.array([4, 5, 6]), np.array([0, 0, 0]), np.array([0.9, 0.0, 0.2]), 0.2)
    np.testing.assert_array_equal(discrete, [4, 0, 6])


def test_epsilon_mix_rate_matches_epsilon():
    rng = np.random.default_rng(0)
    n = 20_001
    out = epsilon_mix(np.zeros(n, np.int64), np.ones(n, np.int64), rng.random(n), 0.13)
    assert abs(out.mean() - 0.13) < 0.01  # binomial sd ~0.0024


def test_gaussian_noise_std_and_clipping():
    rng = np.random.default_rng(1)
    normals = rng.standard_normal((4001, 5)).astype(np.float32)
    out = gaussian_noise(np.zeros((4001, 5), np.float32), normals, 0.07)
    assert out.dtype == np.float32
    assert abs(out.std() - 0.07) < 0.003 and abs(out.mean()) < 0.003
    edge = gaussian_noise(np.full((3, 5), 0.99, np.float32), np.ones((3, 5)), 0.5)
    np.testing.assert_array_equal(edge, np.ones((3, 5)))  # clipped to the action bound


def test_categorical_sample_inverse_cdf():
    logits = np.log(np.array([[0.2, 0.5, 0.3], [0.2, 0.5, 0.3]]))
    picks = categorical_sample(logits, np.array([0.19, 0.69]))
    np.testing.assert_array_equal(picks, [0, 1])
    assert categorical_sample(logits[:1], np.array([0.71]))[0] == 2
    rng = np.random.default_rng(2)
    big = np.repeat(np.log([[0.1, 0.6, 0.3]]), 6001, axis=0)
    freq = np.bincount(categorical_sample(big, rng.random(6001)), minlength=3) / 6001
    np.testing.assert_allclose(freq, [0.1, 0.6, 0.3], atol=0.02)


# --- policies -------------------------------------------------------------------------------


def _plan(index: int, seed: int = 0) -> EpisodePlan:
    return plan_episodes(seed, "fake", [index], total=10)[0]


def test_policy_streams_depend_on_the_episode_not_the_slot():
    obs = np.random.default_rng(3).standard_normal((3, 17)).astype(np.float32)

    def expert(o: np.ndarray) -> np.ndarray:
        return np.tanh(o[:5])

    a = ExpertPolicy(expert, CONT, 3, noise_std=0.2, epsilon=0.3)
    b = ExpertPolicy(expert, CONT, 3, noise_std=0.2, epsilon=0.3)
    a.reset(0, _plan(4))
    b.reset(2, _plan(4))
    b.reset(0, _plan(5))
    same = obs[[0, 0, 0]]  # both slots see the same observation
    for _ in range(6):
        out_a = a.act(same, np.array([True, False, False]))
        out_b = b.act(same, np.array([True, False, True]))
        np.testing.assert_array_equal(out_a[0], out_b[2])
        assert np.all(out_a[1:] == 0)  # inactive rows are zeros
        assert np.all(np.abs(out_a) <= 1)


def test_random_policy_bounds_and_uniformity():
    policy = RandomPolicy(DISC, 3)
    for slot in range(3):
        policy.reset(slot, _plan(slot))
    actions = np.concatenate([policy.act(np.zeros((3, 17)), np.ones(3, bool)) for _ in range(1400)])
    assert actions.dtype == np.int64
    counts = np.bincount(actions, minlength=7)
    assert len(counts) == 7 and counts.min() > 0.8 * 600
    cont = RandomPolicy(CONT, 1)
    cont.reset(0, _plan(0))
    x = np.concatenate([cont.act(np.zeros((1, 17)), np.ones(1, bool)) for _ in range(500)])
    assert x.shape == (500, 5) and x.min() >= -1 and x.max() <= 1 and x.std() > 0.5


def test_act_before_reset_is_an_error():
    with pytest.raises(RuntimeError, match="never reset"):
        RandomPolicy(CONT, 2).act(np.zeros((2, 17)), np.ones(2, bool))


# --- the recorder on real Meta-World ------------------------------------------------------------


def test_expert_records_successful_reach_episodes_independent_of_slots():
    from dtmem.collect.policies import make_policy
    from dtmem.config.collect import PolicyConfig
    from dtmem.envs.metaworld import make_metaworld_env

    plans = plan_episodes(7, "reach-v3", range(5), total=5)
    cfg = PolicyConfig(kind="expert", noise_std=0.05)
    one = make_metaworld_env("reach-v3", 1, seed=0)
    three = make_metaworld_env("reach-v3", 3, seed=0)
    got1 = record_episodes(one, make_policy(cfg, one.spec, 1, "reach-v3"), plans, max_steps=150)
    got3 = record_episodes(three, make_policy(cfg, three.spec, 3, "reach-v3"), plans, max_steps=150)
    assert sum(bool(r.success) for r in got1) >= 4  # the expert solves reach within 150 steps
    for r1, r3 in zip(got1, got3, strict=True):
        e = r1.episode
        assert e.observations.shape == (151, 39) and e.actions.shape == (150, 4)
        assert e.infos["success"].shape == (151, 1) and not e.infos["success"][0, 0]
        assert e.truncations[-1] and not e.truncations[:-1].any() and not e.terminations.any()
        np.testing.assert_array_equal(e.observations, r3.episode.observations)
        np.testing.assert_array_equal(e.actions, r3.episode.actions)
        assert r1.episode_return == pytest.approx(float(e.rewards.sum()), rel=1e-5)


def test_worker_returns_the_recorder_episodes_and_where_its_time_went():
    from dtmem.collect.actors import CollectChunk, CollectWorker
    from dtmem.collect.policies import make_policy
    from dtmem.config.collect import PolicyConfig
    from dtmem.envs.metaworld import make_metaworld_env

    cfg = PolicyConfig(kind="expert", noise_std=0.05)
    worker = CollectWorker("metaworld", cfg, envs_per_actor=2, max_steps=23, env_seed=0)
    plans = plan_episodes(7, "reach-v3", range(3), total=3)
    first = worker.run(CollectChunk("reach-v3", tuple(plans[:2])))
    second = worker.run(CollectChunk("reach-v3", tuple(plans[2:])))
    worker.close()
    env = make_metaworld_env("reach-v3", 1, seed=0)
    want = record_episodes(env, make_policy(cfg, env.spec, 1, "reach-v3"), plans, max_steps=23)
    got = first.episodes + second.episodes
    for g, w in zip(got, want, strict=True):
        assert g.plan == w.plan
        np.testing.assert_array_equal(g.episode.observations, w.episode.observations)
        np.testing.assert_array_equal(g.episode.actions, w.episode.actions)
    t1, t2 = first.timing, second.timing
    assert t1.built_env and not t2.built_env  # the second chunk reuses the worker's envs
    assert t1.worker == t2.worker and t1.ready_at == t2.ready_at <= t1.began < t2.began
    assert t1.env_seconds > t2.env_seconds >= 0 and t1.episodes_seconds > 0
    assert 0 < t1.cpu_seconds <= 1.5 * (t1.env_seconds + t1.episodes_seconds) + 0.05


def test_timeline_phases_follow_one_another_per_worker():
    from dtmem.collect.actors import ChunkTiming
    from dtmem.collect.driver import Timeline

    clock = Timeline(started=100.0, first_dispatch=100.25, collected=111.0, write=0.125)
    for worker, ready, env, eps in [("a", 100.5, 1.0, 8.0), ("a", 100.5, 0.5, 1.0),
                                    ("b", 101.5, 1.5, 7.5)]:  # fmt: skip
        clock.add(ChunkTiming(worker, ready, ready + 0.01, env, eps, 0.9 * (env + eps), True))
    p = clock.breakdown(ended=111.5)
    assert p["total"] == 11.5 and p["setup"] == 0.25 and p["finish"] == 0.5
    assert p["actor_start"] == 1.0  # mean of 0.5 and 1.5
    assert p["envs"] == 1.5 and p["episodes"] == 8.25  # a: 1.5 + 9.0, b: 1.5 + 7.5
    assert p["actor_idle"] == pytest.approx(11.5 - 1.0 - 1.5 - 8.25 - 0.5)
    assert p["actor_cpu"] == pytest.approx(0.9 * 9.75) and p["write"] == 0.125
    assert Timeline(started=5.0).breakdown(ended=6.0) == {"total": 1.0}  # nothing collected


# --- config ---------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def mlflow_db(tmp_path_factory) -> Path:
    """One sqlite store for the module (creating its tables takes seconds)."""
    return tmp_path_factory.mktemp("mlflow") / "mlflow.db"


def _smoke(tmp_path: Path, *extra: str, db: Path | None = None) -> CollectConfig:
    """The smoke config, smaller, writing into tmp_path and a sqlite MLflow store."""
    db = db or tmp_path / "mlflow.db"
    return load_config(
        CollectConfig,
        SMOKE,
        [
            f"root={tmp_path / 'ds'}",
            f"tracking.uri=sqlite:///{db}",
            "tracking.system_metrics=false",
            *extra,
        ],
    )


# Costs of this machine (2 cores, quiet): a Ray actor ready, a Meta-World env built (first
# with the metaworld import, then another task's), an expert episode of 500 steps
START, FIRST_BUILD, BUILD = 0.65, 1.25, 0.85
EPISODE = {"reach-v3": 0.35, "push-v3": 0.85}


def _simulate(tasks: list[str], episodes: int, actors: int) -> tuple[float, int]:
    """Finish time and env builds of the driver's real scheduler on a simulated pool that
    follows ``RayPool``'s rules (up to QUEUED_PER_ACTOR chunks per actor, run in turn; a free
    actor's last task passed to ``take``), with the costs above and no noise."""
    import heapq

    from dtmem.collect.datasets import TaskState
    from dtmem.collect.driver import QUEUED_PER_ACTOR, Timeline, _scheduler

    cfg = _smoke(Path("unused"), f"tasks=[{', '.join(tasks)}]",
                 f"episodes_per_task={episodes}", f"num_actors={actors}")  # fmt: skip
    states = {t: TaskState(t, t, episodes, cfg.attempts_per_task, 1) for t in tasks}
    take = _scheduler(cfg, states, 1, Timeline(0.0))
    queued: list[list[Any]] = [[] for _ in range(actors)]
    held: list[str | None] = [None] * actors
    envs: list[set[str]] = [set() for _ in range(actors)]
    ends: list[tuple[float, int]] = []
    now, builds = 0.0, 0

    def begin(a: int, at: float) -> None:
        nonlocal builds
        chunk = queued[a][0]
        build = 0.0
        if chunk.task not in envs[a]:
            build = BUILD if envs[a] else FIRST_BUILD
            envs[a].add(chunk.task)
            builds += 1
        heapq.heappush(ends, (at + build + EPISODE[chunk.task] * len(chunk.plans), a))

    while True:
        for a in range(actors):
            while len(queued[a]) < QUEUED_PER_ACTOR and (chunk := take(held[a])) is not None:
                queued[a].append(chunk)
                held[a] = chunk.task
                if len(queued[a]) == 1:
                    begin(a, max(now, START))
        if not ends:
            return now, builds
        now, a = heapq.heappop(ends)
        chunk = queued[a].pop(0)
        if queued[a]:
            begin(a, now)
        st, n = states[chunk.task], len(chunk.plans)
        st.outstanding, st.next_write, st.kept = st.outstanding - n, st.next_write + n, st.kept + n
        st.done = st.finished()


def test_scheduler_finishes_two_actors_near_the_bound():
    tasks = ["reach-v3", "push-v3"]
    one, one_builds = _simulate(tasks, 8, 1)
    two, two_builds = _simulate(tasks, 8, 2)
    work = 8 * sum(EPISODE.values())
    assert one == pytest.approx(START + FIRST_BUILD + BUILD + work) and one_builds == 2
    # each actor builds its task's envs; one more build lets the reach actor help with push
    assert two_builds == 3
    bound = START + FIRST_BUILD + (work + BUILD) / 2
    assert bound <= two <= 1.03 * bound
    print(f"2 vs 1 actors at best on these costs: {one / two:.2f}")


def test_bad_config_is_a_one_line_error(tmp_path):
    with pytest.raises(ConfigError, match=r"tasks\.1: unknown Meta-World task 'reach-v9'") as err:
        _smoke(tmp_path, "tasks=[reach-v3, reach-v9]")
    assert "\n" not in str(err.value) and "valid tasks: " in str(err.value)
    with pytest.raises(ConfigError, match="unknown Atari game 'Pongg'"):
        _smoke(tmp_path, "suite=atari", "tasks=[Pongg]", "policy.kind=random", "policy.noise_std=0")
    atari = ("suite=atari", "tasks=[Pong]", "policy.kind=random", "policy.noise_std=0")
    bad = [
        (("keep=successful", *atari), "needs a success signal"),
        (("policy.kind=random",), "noise_std: applies to the expert only"),
        (("dataset.name=plain",), "must contain '{task}'"),
        (("episodes_per_task=0",), "episodes_per_task: Input should be greater than"),
        (("policy.kind=rllib",), "needs an rllib section"),
        (("unknown_field=1",), "unknown_field: unknown field"),
        (("suite=atari", "tasks=[pong]"), "write the game 'pong' as 'Pong'"),
    ]
    for overrides, message in bad:
        with pytest.raises(ConfigError, match=re.escape(message)) as err:
            _smoke(tmp_path, *overrides)
        assert "\n" not in str(err.value) and str(SMOKE) in str(err.value)


def test_smoke_config_has_ml45_train_tasks_and_one_held_out_task(tmp_path):
    from dtmem.envs.metaworld import ML45_TEST_TASKS, ML45_TRAIN_TASKS

    cfg = _smoke(tmp_path)
    assert all(t in ML45_TRAIN_TASKS for t in cfg.tasks[:3]) and cfg.tasks[3] in ML45_TEST_TASKS
    assert cfg.dataset_ids()[0] == "dtmem/smoke/reach-v3-expert-v0"


def test_cli_unknown_task_is_one_line_exit_2(tmp_path):
    from typer.testing import CliRunner

    from dtmem.cli import app

    result = CliRunner().invoke(app, ["collect", str(SMOKE), "--set", "tasks=[nope-v3]"])
    assert result.exit_code == 2
    # one error line (the CLI may first say what starts), no traceback
    errors = [line for line in result.output.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and "nope-v3" in errors[0] and "Traceback" not in result.output


def test_unwritable_dataset_root_is_one_line_exit_2_before_ray(tmp_path, monkeypatch):
    """A dataset root that cannot be written (here: under a regular file) is refused in one
    line before Ray or any actor starts."""
    from typer.testing import CliRunner

    import pipelines.collect
    from dtmem.cli import app

    def refuse(*args, **kwargs):
        raise AssertionError("Ray started despite an unwritable dataset root")

    monkeypatch.setattr(pipelines.collect, "ray_session", refuse)
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    overrides = [f"root={blocker / 'datasets'}", f"tracking.uri=sqlite:///{tmp_path / 'm.db'}"]
    args = ["collect", str(SMOKE)] + [x for o in overrides for x in ("--set", o)]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 2, result.output
    errors = [line for line in result.output.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and "a-file" in errors[0] and "Traceback" not in result.output
    assert blocker.read_text() == "not a directory"


# --- the pipeline ------------------------------------------------------------------------------


def _quiet() -> Console:
    return Console(file=io.StringIO(), width=120)


@pytest.mark.slow
def test_smoke_collection_end_to_end(ray_session, tmp_path, monkeypatch, mlflow_db):
    import minari
    from mlflow.tracking import MlflowClient

    from pipelines.collect import run_collect

    cfg = _smoke(
        tmp_path, "episodes_per_task=2", "max_steps=40", "tracking.experiment=e2e", db=mlflow_db
    )
    console = _quiet()
    report = run_collect(cfg, console=console)
    summaries = report.datasets
    assert report.episodes == 8 and report.env_steps == 320 and report.env_steps_per_s > 0
    assert [s.task for s in summaries] == list(cfg.tasks)
    assert "reach-v3-expert-v0" in console.file.getvalue()  # the printed table

    monkeypatch.setenv("MINARI_DATASETS_PATH", str(tmp_path / "ds"))
    for s in summaries:
        assert s.status == "written" and s.episodes == 2 and s.steps == 80
        ds = minari.load_dataset(s.dataset_id)  # plain Minari opens it
        assert ds.total_episodes == 2 and ds.total_steps == 80
        ep = ds[1]
        assert ep.observations.shape == (41, 39) and ep.actions.shape == (40, 4)
        assert ep.infos["success"].shape == (41, 1)
        assert open_dataset(s.dataset_id).stored_content_hash == s.content_hash

    client = MlflowClient(cfg.tracking.uri)
    exp = client.get_experiment_by_name(cfg.tracking.experiment)
    (run,) = client.search_runs([exp.experiment_id], "tags.`dtmem.stage` = 'collect'")
    assert run.info.run_id == report.run_id
    assert run.info.status == "FINISHED"
    for s in summaries:
        assert run.data.tags[f"data.{s.dataset_id}.content_hash"] == s.content_hash
    assert run.data.metrics["collect/reach-v3/episodes"] == 2
    logged = {k: v for k, v in run.data.metrics.items() if k.startswith("perf/collect_")}
    assert logged["perf/collect_episodes_s"] > 0 and logged["perf/collect_envs_s"] > 0
    assert logged["perf/collect_total_s"] <= report.phases["total"]  # logged before the end
    assert "collect_summary.csv" in {a.path for a in client.list_artifacts(run.info.run_id)}

    # same config again: every dataset is reused, nothing recollected
    again = run_collect(cfg, console=_quiet()).datasets
    assert [s.status for s in again] == ["reused"] * 4
    assert [s.content_hash for s in again] == [s.content_hash for s in summaries]
    with pytest.raises(DatasetExistsError, match="another collection config"):
        run_collect(cfg.model_copy(update={"seed": 1}), console=_quiet())


@pytest.mark.slow
def test_same_config_same_data_whatever_the_actors(ray_session, tmp_path, mlflow_db):
    from pipelines.collect import run_collect

    common = ["tasks=[reach-v3, push-v3]", "max_steps=66", "episodes_per_task=3"]
    common += ["keep=successful", "max_attempts=12"]  # about half fail by step 66
    a_run = run_collect(
        _smoke(tmp_path / "a", *common, "num_actors=1", "envs_per_actor=1", db=mlflow_db),
        console=_quiet(),
    )
    b_run = run_collect(
        _smoke(tmp_path / "b", *common, "num_actors=2", "envs_per_actor=2", db=mlflow_db),
        console=_quiet(),
    )
    a, b = a_run.datasets, b_run.datasets
    assert [s.content_hash for s in a] == [s.content_hash for s in b]
    assert all(s.episodes <= 3 and s.attempted <= 12 for s in a)
    assert any(s.attempted > s.episodes for s in a)  # unsuccessful attempts were dropped
    for s in a:  # episode by episode, every stored array
        one, two = (
            open_dataset(s.dataset_id, tmp_path / "a" / "ds"),
            open_dataset(s.dataset_id, tmp_path / "b" / "ds"),
        )
        assert one.total_episodes == two.total_episodes == s.episodes
        for i in range(one.total_episodes):
            e1, e2 = one.read_episode(i), two.read_episode(i)
            assert e1.infos["success"].any()  # keep=successful
            for name in ("observations", "actions", "rewards", "terminations", "truncations"):
                np.testing.assert_array_equal(getattr(e1, name), getattr(e2, name), err_msg=name)
            np.testing.assert_array_equal(e1.infos["success"], e2.infos["success"])
    for result in (a_run, b_run):  # per worker, the phases add up to the call
        p = result.phases
        per_worker = ("actor_start", "envs", "episodes", "actor_idle", "finish")
        assert sum(p[k] for k in per_worker) == pytest.approx(p["total"])
        assert p["envs"] > 0 and p["episodes"] > 0 and p["actor_idle"] >= -0.05


@pytest.mark.slow
def test_interrupted_collection_leaves_nothing_then_reruns(
    ray_session, tmp_path, monkeypatch, mlflow_db
):
    from pipelines.collect import run_collect

    cfg = _smoke(tmp_path, "tasks=[reach-v3]", "episodes_per_task=4", "max_steps=20", db=mlflow_db)
    cfg = cfg.model_copy(update={"num_actors": 1})
    real_add = DatasetWriter.add_episode
    calls = []

    def failing_add(self: DatasetWriter, episode):
        calls.append(1)
        if len(calls) == 3:
            raise RuntimeError("disk on fire")
        real_add(self, episode)

    monkeypatch.setattr(DatasetWriter, "add_episode", failing_add)
    with pytest.raises(RuntimeError, match="disk on fire"):
        run_collect(cfg, console=_quiet())
    with pytest.raises(DatasetNotFoundError):
        open_dataset(cfg.dataset.dataset_id("reach-v3"), cfg.root)
    leftovers = [p.name for p in Path(cfg.root).iterdir() if p.name.startswith(".dtmem-tmp")]
    assert leftovers == []

    monkeypatch.setattr(DatasetWriter, "add_episode", real_add)
    (summary,) = run_collect(cfg, console=_quiet()).datasets
    assert summary.status == "written" and summary.episodes == 4


@pytest.mark.slow
def test_atari_random_collection_stores_single_frames(
    ray_session, tmp_path, monkeypatch, mlflow_db
):
    import minari

    from pipelines.collect import run_collect

    extra = ["suite=atari", "tasks=[Pong]", "policy.kind=random", "policy.noise_std=0"]
    extra += ["policy.epsilon=0", "episodes_per_task=3", "max_steps=23", "num_actors=1"]
    (s,) = run_collect(_smoke(tmp_path, *extra, db=mlflow_db), console=_quiet()).datasets
    assert s.dataset_id == "dtmem/smoke/Pong-expert-v0" and s.success_rate is None
    monkeypatch.setenv("MINARI_DATASETS_PATH", str(tmp_path / "ds"))
    ds = minari.load_dataset(s.dataset_id)
    ep = ds[2]
    assert ep.observations.shape == (24, 84, 84) and ep.observations.dtype == np.uint8
    assert ep.actions.shape == (23,) and ds.action_space.n == 18
    assert ep.observations[-1].any()  # capped by max_steps: a real final frame, not zeros
    assert open_dataset(s.dataset_id).env_id == "ALE/Pong-v5"


# --- RLlib ---------------------------------------------------------------------------------------


@pytest.mark.slow
def test_rllib_agent_trains_checkpoints_and_acts_in_atari(ray_session, tmp_path):
    """A tiny budget (one PPO iteration of 64 Pong steps, a small CNN): checks the path
    train -> checkpoint -> load RLModule -> act in the collection env, not learning."""
    from dtmem.collect.rllib_agent import (
        CheckpointPolicy,
        checkpoint_paths,
        missing_checkpoints,
        train_agent,
    )
    from dtmem.config.collect import RLlibConfig
    from dtmem.envs.atari import make_atari_env

    start = time.perf_counter()
    rl = RLlibConfig(
        checkpoint_dir=str(tmp_path / "agents"),
        checkpoint_iterations=(1,),
        train_batch_size=64,
        minibatch_size=32,
        num_epochs=1,
        num_env_runners=0,
        envs_per_env_runner=1,
        rollout_fragment_length=64,
        conv_filters=((8, 8, 4), (16, 4, 2), (16, 9, 1)),  # 84 -> 20 -> 9 -> 1
        max_episode_steps=200,
    )
    seen = []
    paths = train_agent(rl, "Pong", seed=0, on_iteration=seen.append)
    assert [s.iteration for s in seen] == [1] and seen[0].env_steps >= 64
    assert missing_checkpoints(rl, "Pong") == [] and paths == checkpoint_paths(rl, "Pong")

    env = make_atari_env("Pong", 2, num_threads=1)
    plans = plan_episodes(0, "Pong", range(3), total=3, variants=1)
    policy = CheckpointPolicy(paths, env.spec, 2, greedy=False, epsilon=0.1)
    got = record_episodes(env, policy, plans, max_steps=25, frame=lambda s: s[-1], autoreset=True)
    for r in got:
        assert r.episode.observations.shape == (26, 84, 84)
        assert r.episode.observations.dtype == np.uint8
        assert r.episode.actions.min() >= 0 and r.episode.actions.max() < 18
        assert r.success is None and r.episode.truncations[-1]
    assert len({r.episode.actions.tobytes() for r in got}) == 3  # sampled, per-episode streams
    assert time.perf_counter() - start < 60
