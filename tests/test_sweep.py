"""Sweeps: search spaces and bad input refused before any trial (no Ray), the smoke sweep end
to end on tiny Meta-World-like datasets written in tmp (MLflow parent and nested trial runs,
ASHA, results table and plot), a sweep resumed after its driver was killed, and ASHA
stopping a Ray Train trial whose workers' CPUs come back for the next one."""

from __future__ import annotations

import csv
import io
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from dtmem.config.base import ConfigError, load_config
from dtmem.config.sweep import SweepConfig
from dtmem.config.train import FinetuneConfig, PretrainConfig
from dtmem.data import synthetic
from dtmem.sweep.base import RESULTS_ARTIFACT, SweepError, read_events
from dtmem.sweep.plan import plan_sweep, resolve_base
from dtmem.sweep.results import bootstrap_ci, plot_heatmap, plot_score, score_points
from dtmem.sweep.space import (
    SpaceError,
    apply_values,
    check_paths,
    grid_size,
    parse_space,
    short_names,
    trial_label,
)
from dtmem.sweep.tracking import (
    PARENT_TAG,
    TRIAL_STATUS_TAG,
    TRIAL_TAG,
    end_open_trial_runs,
    trial_config_yaml,
    trial_params,
    trial_tags,
)
from dtmem.sweep.trial import trial_config
from tuning.sweep import run_sweep

ROOT = Path(__file__).resolve().parents[1]
TUNING = ROOT / "tuning"
SMOKE = TUNING / "smoke.yaml"
OBS, ACT = 39, 4
TASKS = ("reach-v3", "push-v3", "pick-place-v3")
# A tiny model and run: 8 steps, checkpoints (and validation reports) at 4 and 8.
TINY = (
    "overrides=[scaling.num_workers=1, optim.max_steps={steps}, optim.warmup_steps=2, "
    "checkpoint.every_steps=4, log_every=2, data.episode_fraction=0.75, data.batch_size=5, "
    "model.n_layer=1, model.d_model=16, model.n_head=2, model.memory.slots=16, "
    "model.dropout=0.0, data.root={root}]"
)


def write_metaworld_like(root: Path, dataset_id: str, task: str, seed: int) -> None:
    """4 episodes of 37 steps with Meta-World's shapes (dtmem.data.synthetic)."""
    synthetic.write_metaworld_like(root, dataset_id, task, episodes=4, steps=37, seed=seed)


@pytest.fixture(scope="module")
def env(tmp_path_factory) -> dict[str, Path | str]:
    """The smoke datasets' ids in a tmp root, one MLflow store and sweep root per module."""
    tmp = tmp_path_factory.mktemp("sweep")
    root = tmp / "data"
    for i, task in enumerate(TASKS):
        write_metaworld_like(root, f"dtmem/smoke/{task}-expert-v0", task, seed=i)
    return {"tmp": tmp, "root": root, "uri": f"sqlite:///{tmp}/mlflow.db"}


def smoke_overrides(
    env: dict[str, Path | str], name: str, *extra: str, steps: int = 8
) -> list[str]:
    return [
        f"name={name}",
        TINY.format(root=env["root"], steps=steps),
        f"storage_dir={env['tmp']}/sweeps",
        f"tracking.uri={env['uri']}",
        "tracking.experiment=sweep-tests",
        "validation.batches=2",
        "validation.batch_size=4",
        "scheduler.grace_period=4",
        "evaluation=null",
        *extra,
    ]


def smoke(env: dict[str, Path | str], name: str, *extra: str, steps: int = 8) -> SweepConfig:
    cfg = load_config(SweepConfig, SMOKE, smoke_overrides(env, name, *extra, steps=steps))
    return cfg.model_copy(update={"base": str(resolve_base(cfg.base, SMOKE.parent))})


def mlflow_client(env):
    from mlflow.tracking import MlflowClient

    return MlflowClient(tracking_uri=str(env["uri"]))


def trial_runs(env, parent_run_id: str) -> list:
    client = mlflow_client(env)
    exp = client.get_experiment_by_name("sweep-tests")
    return client.search_runs(
        [exp.experiment_id], filter_string=f"tags.`mlflow.parentRunId` = '{parent_run_id}'"
    )


def csv_artifact(env, run_id: str, path: str) -> list[dict[str, str]]:
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        local = mlflow_client(env).download_artifacts(run_id, path, tmp)
        return list(csv.DictReader(io.StringIO(Path(local).read_text())))


# --------------------------------------------------------------------------- no Ray


def test_a_sweep_that_stops_ends_the_trial_runs_left_running(tmp_path) -> None:
    """A trial whose process Tune stopped before its clean-up ended its run: the driver ends
    it (KILLED interrupted); runs that ended, and other sweeps' trials, keep their state."""
    from dtmem.tracking import attach

    uri = f"sqlite:///{tmp_path}/mlflow.db"
    client = mlflow_client({"uri": uri})
    exp = client.create_experiment("t")
    parent = client.create_run(exp).info.run_id
    other = client.create_run(exp).info.run_id
    left = client.create_run(exp, tags={PARENT_TAG: parent}).info.run_id
    done = client.create_run(exp, tags={PARENT_TAG: parent}).info.run_id
    client.set_terminated(done, status="FINISHED")
    elsewhere = client.create_run(exp, tags={PARENT_TAG: other}).info.run_id
    assert end_open_trial_runs(attach(uri, parent), KeyboardInterrupt()) == [left]
    got = {r: client.get_run(r) for r in (left, done, elsewhere)}
    assert got[left].info.status == "KILLED"
    assert got[left].data.tags[TRIAL_STATUS_TAG] == "interrupted"
    assert (got[done].info.status, got[elsewhere].info.status) == ("FINISHED", "RUNNING")
    assert TRIAL_STATUS_TAG not in got[done].data.tags


def test_shipped_sweep_configs_plan() -> None:
    """The three shipped sweeps validate against their base configs (no data needed)."""
    slots = plan_sweep(load_config(SweepConfig, TUNING / "memory_slots.yaml", []), False)
    slots_axis = next(a for a in slots.axes if a.path == "model.memory.slots")
    assert slots_axis.values == (64, 128, 256, 512, 1024, 2048)  # log2 grid
    assert grid_size(slots.axes) == 18 and slots.spec.executor == "train"
    assert slots.max_t == 20000 and isinstance(slots.base_config, PretrainConfig)
    lora = plan_sweep(load_config(SweepConfig, TUNING / "lora.yaml", []), False)
    assert {a.path for a in lora.axes} == {"lora.rank", "lora.alpha", "lora.dropout"}
    assert grid_size(lora.axes) == 32 and isinstance(lora.base_config, FinetuneConfig)
    assert lora.score == "eval/success_rate_mean" and lora.spec.executor == "local"
    smoke_plan = plan_sweep(load_config(SweepConfig, SMOKE, []), False)
    assert grid_size(smoke_plan.axes) == 4 and smoke_plan.spec.executor == "local"
    # the trial config: base + values + the sweep's own fields
    assert smoke_plan.spec.base["scaling"]["ray"] is False
    assert smoke_plan.spec.base["registry"]["name"] is None
    assert Path(smoke_plan.spec.base["checkpoint"]["dir"]).is_absolute()


def test_space_forms() -> None:
    axes = parse_space(
        {
            "model.memory.slots": {"grid": [64, 128]},
            "lora.rank": {"choice": [2, 4, 8]},
            "lora.dropout": {"uniform": [0.0, 0.2]},
            "optim.lr": {"loguniform": [1e-4, 1e-2]},
            "model.n_layer": {"randint": [1, 4]},
        }
    )
    assert [a.kind for a in axes] == ["grid", "choice", "uniform", "loguniform", "randint"]
    assert grid_size(axes) == 2 and axes[4].upper_bound() == 3
    probes = axes[3].probe_values(np.random.default_rng(0))
    assert min(probes) >= 1e-4 and max(probes) <= 1e-2 and len(probes) > 2
    assert all(1 <= v < 4 for v in axes[4].probe_values(np.random.default_rng(0)))
    data = {"data": {"datasets": [{"id": "a"}, {"id": "b"}]}, "seed": 3}
    out = apply_values(data, {"data.datasets.1.weight": 2.0, "model.memory.slots": 7})
    assert out["data"]["datasets"][1] == {"id": "b", "weight": 2.0}
    assert out["model"] == {"memory": {"slots": 7}} and "model" not in data  # a copy
    check_paths(parse_space({"data.datasets.0.weight": {"grid": [1.0]}}), PretrainConfig, {}, "s")


def test_trials_are_named_by_what_they_vary() -> None:
    names = short_names(["model.memory.slots", "seed", "lora.rank", "lora.alpha", "optim.lr"])
    assert names == {
        "model.memory.slots": "slots",
        "seed": "seed",
        "lora.rank": "lora.rank",
        "lora.alpha": "lora.alpha",
        "optim.lr": "lr",
    }
    assert trial_label({"model.memory.slots": 64, "seed": 1}, names) == "slots=64,seed=1"
    assert trial_label({"lora.rank": 8, "lora.alpha": 2.0}, names) == "lora.rank=8,lora.alpha=2"
    # two paths that would shorten alike keep their whole path
    assert short_names(["model.seed", "seed"]) == {"model.seed": "model.seed", "seed": "seed"}


def test_no_credential_reaches_a_trial_run(env, monkeypatch) -> None:
    """$MLFLOW_TRACKING_URI with a user and token: a trial's params, tags and config.yaml
    (exactly what ``trial_run`` logs) hold the URI without them."""
    from dataclasses import replace

    secret_uri = "https://alice:s3cr3t-token@mlflow.example.com:5000/?api_key=k3y"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", secret_uri)
    from dtmem.config.tracking import TrackingConfig

    cfg = smoke(env, "secret").model_copy(update={"tracking": TrackingConfig()})  # uri unset
    plan = plan_sweep(cfg, check_data=False)
    assert plan.spec.tracking.uri == secret_uri  # trials log to it...
    spec = replace(plan.spec, parent_run_id="p" * 32)
    values = {"model.memory.slots": 16, "seed": 0}
    trial_cfg = trial_config(spec, values, "abc_00000")
    params = trial_params(trial_cfg)
    assert params["tracking.uri"] == "https://mlflow.example.com:5000/"  # ...and never say so
    logged = [*params.values(), *trial_tags(spec, "abc_00000", values).values()]
    logged.append(trial_config_yaml(trial_cfg))
    for text in logged:
        assert "s3cr3t" not in text and "alice" not in text and "k3y" not in text, text


def test_a_trial_run_is_a_child_of_its_sweep_run_inside_an_experiment(env) -> None:
    """An experiment node's tracking tags name the experiment run as parent: the trial's
    own tags still name the sweep's run, where the driver looks to close an early-stopped
    trial (else it stayed RUNNING)."""
    from dataclasses import replace

    plan = plan_sweep(smoke(env, "parented"), check_data=False)
    tracking = plan.spec.tracking.model_copy(update={"tags": {PARENT_TAG: "e" * 32}})
    spec = replace(plan.spec, parent_run_id="s" * 32, tracking=tracking)
    tags = trial_tags(spec, "abc_00000", {"model.memory.slots": 16, "seed": 0})
    assert tags[PARENT_TAG] == "s" * 32 and tags[TRIAL_TAG] == "abc_00000"


@pytest.mark.parametrize(
    ("space", "message"),
    [
        ({"model.memory.slots": {"grid": []}}, "grid is empty"),
        ({"model.memory.slots": [64, 128]}, "expected one of"),
        ({"model.memory.slots": {"normal": [0, 1]}}, "unknown kind 'normal'"),
        ({"optim.lr": {"uniform": [0.1, 0.01]}}, "needs low < high"),
        ({"optim.lr": {"loguniform": [0.0, 0.1]}}, "loguniform needs low > 0"),
        ({"model.n_layer": {"randint": [1.5, 4]}}, "randint needs integer bounds"),
        ({"optim.lr": {"uniform": ["a", 1]}}, "two numbers"),
    ],
)
def test_malformed_spaces(space, message) -> None:
    with pytest.raises(SpaceError, match=message):
        parse_space(space)


@pytest.mark.parametrize(
    ("extra", "error", "message"),
    [
        (["space={model.memry.slots: {grid: [16]}}"], SpaceError, "unknown field 'memry'"),
        (["space={model.memory.slots: {grid: []}}"], SpaceError, "grid is empty"),
        (["space={model.memory.slots: {choice: [a, 16]}}"], SpaceError, "slots='a'"),
        (["space={model.memory.slots: {uniform: [16, 64]}}"], SpaceError, "fractional"),
        (["space={model.memory.slots: {grid: [0]}}"], SpaceError, "greater than 0"),
        (["space={model.n_head: {grid: [2, 3]}}"], SpaceError, "n_head=3 does not fit"),
        (
            ["space={model.d_model: {grid: [16, 18]}, model.n_head: {grid: [2, 4]}}"],
            SpaceError,
            "the combination model.d_model=18, model.n_head=4",
        ),
        (["space={run_name: {grid: [a, b]}}"], SpaceError, "cannot be swept"),
        (["space={scaling.num_workers: {grid: [1, 2]}}"], SpaceError, "cannot be swept"),
        (["space={data.datasets: {grid: [1]}}"], SpaceError, "a list of sections"),
        (["metric=val/accuracy"], SweepError, "no trial of this sweep reports it"),
        (["metric=eval/return_mean"], SweepError, "no trial of this sweep reports it"),
        (
            [
                "evaluation={tasks: [reach-v3], target_return: 10.0}",
                "metric=eval/return_mean",
                "mode=max",
            ],
            SweepError,
            "known only when a trial ends",
        ),
        (["evaluation={tasks: [reach-v99], target_return: 1.0}"], ValueError, "reach-v99"),
        (["overrides=[data.episode_fraction=1.0]"], SweepError, "none is held out"),
        (["base=nowhere.yaml"], SweepError, "no such config file"),
        (["overrides=[optim.lr=-1]"], ConfigError, "optim.lr"),
        (["resources.executor=local", "overrides=[scaling.num_workers=2]"], SweepError, "one"),
        (["overrides=[validation.episodes=1]"], SweepError, "its own held-out loss"),
        (["scheduler.grace_period=8"], SweepError, "could never stop one before its end"),
    ],
)
def test_bad_input_is_refused_before_any_trial(env, monkeypatch, extra, error, message) -> None:
    def no_tuner(*args, **kwargs):
        raise AssertionError("a trial was about to start")

    monkeypatch.setattr("tuning.sweep.build_tuner", no_tuner)
    cfg = load_config(SweepConfig, SMOKE, smoke_overrides(env, "bad", *extra))
    if not Path(cfg.base).is_absolute() and cfg.base != "nowhere.yaml":
        cfg = cfg.model_copy(update={"base": str(resolve_base(cfg.base, SMOKE.parent))})
    with pytest.raises(error, match=message) as info:
        run_sweep(cfg)
    assert "\n" not in str(info.value)
    assert not (Path(env["tmp"]) / "sweeps" / "bad").exists()


def test_optuna_is_an_optional_extra(env, monkeypatch) -> None:
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "optuna" else real(name, *a)
    )
    with pytest.raises(SweepError, match=r"pip install 'dtmem\[optuna\]'"):
        plan_sweep(smoke(env, "opt", "search=optuna"), False)


def test_cli_bad_space_is_one_line_exit_2(env) -> None:
    from typer.testing import CliRunner

    from dtmem.cli import app

    args = ["sweep", str(SMOKE)]
    for o in smoke_overrides(env, "cli", "space={model.memory.slotz: {grid: [16]}}"):
        args += ["--set", o]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 2
    lines = result.output.strip().splitlines()  # the CLI's "dtmem sweep ...: results to" header
    errors = [line for line in lines if line.startswith("error:")]
    assert errors == [lines[-1]] and "Traceback" not in result.output
    assert errors[0].startswith("error: space: model.memory.slotz: unknown field")


def test_bootstrap_ci() -> None:
    mean, low, high = bootstrap_ci([1.0, 2.0, 3.0, 4.0, 10.0], resamples=2000)
    assert mean == pytest.approx(4.0) and low < mean < high and low >= 1.0 and high <= 10.0
    assert bootstrap_ci([2.5], resamples=100) == (2.5, 2.5, 2.5)


def test_score_points_and_plots(env, tmp_path) -> None:
    """Two seeds per slots value: the CI is over seeds; early-stopped trials are left out."""
    plan = plan_sweep(smoke(env, "plots"), False)
    rows = [
        {"trial_id": f"t{i}", "status": "finished", "model.memory.slots": slots, "val/loss": v}
        for i, (slots, v) in enumerate([(16, 0.5), (16, 0.7), (64, 0.2), (64, 0.4)])
    ]
    rows.append({"trial_id": "t9", "status": "early_stopped", "model.memory.slots": 64})
    points, method = score_points(plan, rows, "model.memory.slots", "val/loss")
    assert method == "bootstrap over 2 seeds"
    assert [(p["model.memory.slots"], p["n"]) for p in points] == [(16, 2), (64, 2)]
    assert [p["score"] for p in points] == pytest.approx([0.6, 0.3])
    assert 0.5 <= points[0]["ci_low"] <= 0.6 <= points[0]["ci_high"] <= 0.7
    png = plot_score(points, "model.memory.slots", "val/loss", method, tmp_path / "s.png")
    assert png.stat().st_size > 1000
    lora = [
        {
            "trial_id": f"l{r}{a}",
            "status": "finished",
            "lora.rank": r,
            "lora.alpha": a,
            "val/loss": r / a,
        }
        for r in (2, 4, 8)
        for a in (0.5, 1.0)
    ]
    png = plot_heatmap(lora, "lora.rank", "lora.alpha", "val/loss", "min", tmp_path / "h.png")
    assert png.stat().st_size > 1000


# --------------------------------------------------------------------------- with Ray


def test_smoke_sweep(env, ray_session, capfd) -> None:
    """4 in-process trials (slots x seeds), 2 at a time, ASHA on the validation loss, final
    models rolled out on reach-v3: one parent run, 4 nested runs named by their values, a
    table and a plot whose score also picks the best trial; no Tune output on the terminal."""
    cfg = smoke(
        env,
        "smoke",
        "evaluation={tasks: [reach-v3], episodes: 2, target_return: 1000.0, max_steps: 15, "
        "envs: 2}",
    )
    result = run_sweep(cfg)
    out = capfd.readouterr()
    terminal = out.out + out.err
    assert "tensorboard" not in terminal.lower() and "Trial status" not in terminal
    assert "dtmem sweep smoke" in out.out  # the sweep's own table, then the line to open it
    assert (
        out.out.strip().splitlines()[-1].startswith(f"run {result.run_id}: see it with `dtmem ui")
    )
    rows = result.rows
    assert len(rows) == 4 and {r["status"] for r in rows} <= {"finished", "early_stopped"}
    assert {(r["model.memory.slots"], r["seed"]) for r in rows} == {
        (16, 0),
        (16, 1),
        (64, 0),
        (64, 1),
    }
    assert {r["trial"] for r in rows} == {f"slots={n},seed={s}" for n in (16, 64) for s in (0, 1)}
    finished = result.trials("finished")
    assert finished and result.best is not None and result.best["status"] == "finished"
    # the best trial is the best by the plot's score (eval/return_mean, max), not ASHA's metric
    assert result.score == "eval/return_mean" and result.score_mode == "max"
    assert result.best["eval/return_mean"] == max(r["eval/return_mean"] for r in finished)
    begins = [e for e in read_events(result.sweep_dir) if e["event"] == "train_begin"]
    assert [e["threads"] for e in begins] == [1] * len(begins)  # scaling.cpus_per_worker
    for r in result.trials("early_stopped"):
        # stopped at the one rung before the last step (grace period 4 of 8 steps); a trial
        # that reaches its last step always finishes
        assert r["step"] == 4, r

    runs = {r.data.tags[TRIAL_TAG]: r for r in trial_runs(env, result.run_id)}
    assert set(runs) == {r["trial_id"] for r in rows}  # exactly one run per trial
    client = mlflow_client(env)
    parent = client.get_run(result.run_id)
    assert parent.data.tags["dtmem.stage"] == "sweep" and parent.info.status == "FINISHED"
    assert parent.data.tags["dtmem.best_trial_id"] == result.best["trial_id"]
    assert parent.data.tags["dtmem.sweep_score"] == "eval/return_mean"
    for row in rows:
        run = runs[row["trial_id"]]
        assert run.info.run_name == row["trial"]
        assert run.data.params["tracking.uri"] == env["uri"]
        assert run.data.params["model.memory.slots"] == str(row["model.memory.slots"])
        assert run.data.params["seed"] == str(row["seed"])
        assert run.data.tags["dtmem.stage"] == "pretrain"
        val = [(m.step, m.value) for m in client.get_metric_history(run.info.run_id, "val/loss")]
        train = [m.step for m in client.get_metric_history(run.info.run_id, "train/loss")]
        if row["status"] == "finished":
            assert run.info.status == "FINISHED"
            assert sorted(s for s, _ in val) == [4, 8] and train == [2, 4, 6, 8]
            assert val[-1][1] == pytest.approx(row["val/loss"])
            assert 0.0 <= run.data.metrics["eval/reach-v3/success_rate"] <= 1.0
            assert run.outputs.model_outputs  # the final model, an MLflow logged model
        else:
            assert run.info.status == "KILLED"
            assert run.data.tags["dtmem.trial_status"] == "early_stopped"
            assert [s for s, _ in val] == [4]

    table = csv_artifact(env, result.run_id, "sweep_results.csv")
    assert sorted(t["trial_id"] for t in table) == sorted(r["trial_id"] for r in rows)
    points = csv_artifact(env, result.run_id, "score_vs_slots.csv")
    assert [p["model.memory.slots"] for p in points] == sorted(
        {str(r["model.memory.slots"]) for r in finished}, key=int
    )
    assert all(float(p["ci_low"]) <= float(p["score"]) <= float(p["ci_high"]) for p in points)
    # the interval says what it rests on: n seeds, or one seed's episodes
    n_seeds = {int(p["n"]) for p in points}
    if n_seeds == {2}:
        assert points[0]["ci"] == "bootstrap over 2 seeds"
    else:
        assert "episodes" in points[0]["ci"] and "seed" in points[0]["ci"]
    plots = {a.path for a in client.list_artifacts(result.run_id, "plots")}
    assert plots == {"plots/score_vs_slots.png"}
    assert result.table.is_file() and all(p.is_file() for p in result.plots)

    with pytest.raises(SweepError, match="already exists"):
        run_sweep(cfg)  # the same name again without --resume


def test_resume_after_the_driver_is_killed(env, ray_session) -> None:
    """The driver (a subprocess on the same Ray) is killed once the first of 3 trials has
    finished and the second has written its first checkpoint; --resume finishes the sweep:
    the finished trial is not trained again, the second continues from its checkpoint in
    the same MLflow run, and MLflow holds one parent and exactly one run per trial."""
    name = "resume"
    extra = [
        "space={model.memory.slots: {grid: [16, 24, 32]}}",
        "scheduler.kind=fifo",
        "resources.max_concurrent_trials=1",
    ]
    cfg = smoke(env, name, *extra, steps=24)
    sweep_dir = Path(env["tmp"]) / "sweeps" / name
    command = [sys.executable, "-m", "tuning.sweep", str(SMOKE)]
    for o in smoke_overrides(env, name, *extra, steps=24):
        command += ["--set", o]
    environ = {**os.environ, "RAY_ADDRESS": ray_session.get_runtime_context().gcs_address}
    driver = subprocess.Popen(
        command, cwd=ROOT, env=environ, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    try:
        deadline = time.time() + 150
        while True:
            ends = [e["trial_id"] for e in read_events(sweep_dir) if e["event"] == "trial_end"]
            starts = [e["trial_id"] for e in read_events(sweep_dir) if e["event"] == "train_begin"]
            second = [t for t in starts if t not in ends]
            if ends and second and (sweep_dir / "runs" / second[0] / "step_00000004").is_dir():
                break
            assert driver.poll() is None, "the driver ended early"
            assert time.time() < deadline, "no trial finished in time"
            time.sleep(0.05)
        driver.send_signal(signal.SIGKILL)
    finally:
        driver.kill()
        driver.wait()
    first, second = ends[0], second[0]

    result = run_sweep(cfg, resume=True)
    assert [r["status"] for r in result.rows] == ["finished"] * 3
    events = read_events(sweep_dir)
    begins = [e for e in events if e["event"] == "train_begin"]
    resumed = events.index(next(e for e in events if e["event"] == "sweep_resume"))
    # one trial at a time after the resume: the second and third share one reused actor
    assert len({e["pid"] for e in events[resumed:] if e["event"] == "train_begin"}) == 1
    assert [e["trial_id"] for e in begins].count(first) == 1  # not trained again
    assert [e["from_step"] for e in begins if e["trial_id"] == second][-1] >= 4
    for r in result.rows:
        from_zero = [e for e in begins if e["trial_id"] == r["trial_id"] and e["from_step"] == 0]
        assert len(from_zero) == 1, r["trial_id"]  # a restarted trial resumes its checkpoint
        assert [e["event"] for e in events if e.get("trial_id") == r["trial_id"]].count(
            "trial_end"
        ) == 1

    runs = trial_runs(env, result.run_id)
    assert sorted(r.data.tags[TRIAL_TAG] for r in runs) == sorted(
        r["trial_id"] for r in result.rows
    )  # one run per trial: a restarted trial continued its run
    client = mlflow_client(env)
    for run in runs:
        assert run.info.status == "FINISHED"
        steps = [m.step for m in client.get_metric_history(run.info.run_id, "train/loss")]
        assert steps == sorted(set(steps)) == list(range(2, 25, 2))  # nothing logged twice
    exp = client.get_experiment_by_name("sweep-tests")
    parents = client.search_runs(
        [exp.experiment_id], filter_string=f"tags.`dtmem.sweep_dir` = '{sweep_dir}'"
    )
    assert [p.info.run_id for p in parents] == [result.run_id]


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["ctrl-c", "sigterm"])
def test_a_signal_ends_the_sweep_interrupted_not_finished(env, ray_session, signum) -> None:
    """Ctrl-C (SIGTERM as the CLI takes it) once the first trial has checkpointed: Tune stops
    its trials and saves its state, then KeyboardInterrupt (Terminated): the sweep's run and
    the trial's end KILLED (the trial 'interrupted'), no results table and no sweep_end, the
    handlers the ones before. Left to Tune alone, Ctrl-C returned the stopped trial as a
    finished sweep, and SIGTERM left the trial's run RUNNING."""
    from dtmem.interrupts import Terminated, sigterm_interrupts
    from tests.helpers import signal_when

    name = f"signal-{signum}"
    sweep_dir = Path(env["tmp"]) / "sweeps" / name
    cfg = smoke(
        env,
        name,
        "space={model.memory.slots: {grid: [16, 24]}}",
        "scheduler.kind=fifo",
        "resources.max_concurrent_trials=1",
        steps=2000,  # minutes: the interrupt comes long before the end
    )
    before = signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)
    with sigterm_interrupts():
        sent = signal_when(lambda: any(sweep_dir.glob("runs/*/step_*")), signum)
        with pytest.raises(Terminated if signum == signal.SIGTERM else KeyboardInterrupt):
            run_sweep(cfg)
    stopped = time.monotonic()
    assert any(sweep_dir.glob("runs/*/step_*")) and stopped - sent[0] < 30
    assert (signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)) == before
    events = [e["event"] for e in read_events(sweep_dir)]
    assert "sweep_end" not in events and events.count("train_begin") == 1
    client = mlflow_client(env)
    exp = client.get_experiment_by_name("sweep-tests")
    (parent,) = client.search_runs(
        [exp.experiment_id], filter_string=f"tags.`dtmem.sweep_dir` = '{sweep_dir}'"
    )
    assert parent.info.status == "KILLED"
    assert not (sweep_dir / "results.csv").exists()
    assert RESULTS_ARTIFACT not in {a.path for a in client.list_artifacts(parent.info.run_id)}
    (trial,) = trial_runs(env, parent.info.run_id)
    assert (trial.info.status, trial.data.tags["dtmem.trial_status"]) == ("KILLED", "interrupted")


def test_asha_stops_a_train_trial_and_its_cpus_return(env, ray_session) -> None:
    """Ray Train inside each trial (1 CPU for the trial + 1 worker: one trial at a time on
    2 CPUs). The second trial (lr 1e-7) is worse at the first rung and stopped; the third
    starts only if the stopped trial's worker placement group was freed."""
    import ray
    from ray.util.placement_group import placement_group_table

    result = run_sweep(
        smoke(
            env,
            "asha-train",
            "resources.executor=train",
            "resources.max_concurrent_trials=2",  # capped to 1 by the cluster's CPUs
            "space={optim.lr: {grid: [3.0e-3, 1.0e-7, 3.0e-3]}}",  # the third = the first
        )
    )
    assert [r["status"] for r in result.rows] == ["finished", "early_stopped", "finished"]
    stopped = result.rows[1]["trial_id"]
    events = read_events(result.sweep_dir)
    stop_t = next(
        e["t"] for e in events if e["event"] == "trial_complete" and e["trial_id"] == stopped
    )
    third = result.rows[2]["trial_id"]
    start_t = next(e["t"] for e in events if e["event"] == "trial_begin" and e["trial_id"] == third)
    assert start_t > stop_t
    pg_id = (result.sweep_dir / "runs" / stopped / ".train_placement_group").read_text()
    assert placement_group_table()[pg_id]["state"] == "REMOVED"
    deadline = time.time() + 30
    while ray.available_resources().get("CPU", 0.0) < 2.0:
        assert time.time() < deadline, f"CPUs not returned: {ray.available_resources()}"
        time.sleep(0.5)
