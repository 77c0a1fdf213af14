"""dtmem.tracking against a real MLflow sqlite store in tmp: params, tags, metrics with steps,
artifacts, run status, resumption, the registry, and the store checks."""

from __future__ import annotations

import csv
import io
import os
import signal
import socket
import time
from pathlib import Path

import pytest
import typer

from dtmem import metrics as M
from dtmem.config.data import DataConfig, DatasetSpec
from dtmem.config.model import ModelConfig
from dtmem.config.tracking import TrackingConfig
from dtmem.tracking import (
    ArtifactRef,
    TrackingError,
    attach,
    check_tracking,
    config_params,
    download_artifacts,
    find_run,
    log_dataset_input,
    log_logged_model,
    redact_uri,
    register_model_dir,
    resolve_artifact_ref,
    resolve_tracking_uri,
    start_run,
)


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> TrackingConfig:
    """One sqlite store for the module (creating its tables costs seconds)."""
    root = tmp_path_factory.mktemp("mlflow")
    return TrackingConfig(uri=f"sqlite:///{root}/mlflow.db", experiment="t", system_metrics=False)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_uri_resolution(monkeypatch, tmp_path) -> None:
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.chdir(tmp_path)
    assert resolve_tracking_uri(None) == f"sqlite:///{tmp_path}/mlflow.db"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://example.invalid:5000")
    assert resolve_tracking_uri(None) == "http://example.invalid:5000"
    assert resolve_tracking_uri("sqlite:///rel/x.db") == f"sqlite:///{tmp_path}/rel/x.db"
    for bad in ("./mlruns", "file:///tmp/mlruns"):
        with pytest.raises(TrackingError, match="file store"):
            resolve_tracking_uri(bad)


def test_unreachable_stores_fail_fast_with_one_line(tmp_path) -> None:
    with pytest.raises(TrackingError, match="unreachable") as err:
        check_tracking(f"http://127.0.0.1:{_free_port()}")
    assert "\n" not in str(err.value)
    with pytest.raises(TrackingError, match="does not exist"):
        check_tracking(f"sqlite:///{tmp_path}/missing/mlflow.db")
    (tmp_path / "dir.db").mkdir()
    with pytest.raises(TrackingError, match="not a file"):
        check_tracking(f"sqlite:///{tmp_path}/dir.db")
    check_tracking(f"sqlite:///{tmp_path}/ok.db")  # a new file in an existing directory


def test_config_params_are_flat_and_expand_dataset_lists() -> None:
    data = DataConfig(
        datasets=(DatasetSpec(id="ns/x-v0"), DatasetSpec(id="ns/y-v0", weight=2.0)), context=5
    )
    params = config_params(data)
    assert params["datasets.0.id"] == "ns/x-v0"
    assert params["datasets.1.weight"] == "2.0"
    assert params["context"] == "5"
    assert params["root"] == "null"
    assert all(isinstance(v, str) for v in params.values())


def test_run_logs_config_tags_metrics_and_artifacts(store, tmp_path) -> None:
    cfg = ModelConfig(context=7, d_model=24, n_head=2)
    with start_run(store, stage="pretrain", config=cfg, tags={"x.tag": "1"}, run_name="r") as run:
        run.log_metrics({M.TRAIN_LOSS: 2.0, M.TRAIN_LR: 0.1}, step=1)
        run.log_metrics({M.TRAIN_LOSS: 1.5}, step=2)
        run.log_table([{"task": "a", "ret": 1.0}, {"task": "b", "extra": 3}], "tables/t.csv")
        (tmp_path / "ckpt").mkdir()
        (tmp_path / "ckpt" / "w.bin").write_bytes(b"abc")
        run.log_artifact(tmp_path / "ckpt", "checkpoint")
    client = run.client
    r = client.get_run(run.run_id)
    assert r.info.status == "FINISHED"
    assert r.data.params["context"] == "7"
    assert r.data.params["memory.slots"] == "1024"
    assert r.data.tags["dtmem.stage"] == "pretrain"
    assert r.data.tags["x.tag"] == "1"
    assert r.data.tags["dtmem.version.torch"].startswith("2.")
    assert "dtmem.version.ray" in r.data.tags
    assert run.metric_history(M.TRAIN_LOSS) == [(1, 2.0), (2, 1.5)]
    paths = {a.path for a in client.list_artifacts(run.run_id)}
    assert {"config.yaml", "checkpoint", "tables"} <= paths
    table = client.download_artifacts(run.run_id, "tables/t.csv", str(tmp_path))
    rows = list(csv.DictReader(io.StringIO(Path(table).read_text())))
    assert rows[1] == {"task": "b", "ret": "", "extra": "3"}
    assert find_run(store, "r", "pretrain") == run.run_id
    assert find_run(store, "r", "finetune") is None


def test_failed_body_marks_the_run_failed_and_reraises(store) -> None:
    with pytest.raises(RuntimeError, match="boom"), start_run(store, stage="pretrain") as run:
        raise RuntimeError("boom")
    assert run.client.get_run(run.run_id).info.status == "FAILED"


def test_resuming_a_run_keeps_params_and_records_changes(store) -> None:
    with start_run(store, stage="pretrain", config=ModelConfig(context=7)) as run:
        run.log_metrics({M.TRAIN_LOSS: 1.0}, step=1)
    with start_run(store, stage="pretrain", config=ModelConfig(context=9), run_id=run.run_id) as r2:
        r2.log_metrics({M.TRAIN_LOSS: 0.5}, step=2)
    assert r2.run_id == run.run_id
    r = run.client.get_run(run.run_id)
    assert r.data.params["context"] == "7"  # MLflow params are write-once
    assert r.data.tags["dtmem.changed_params"] == "context"
    assert attach(run.uri, run.run_id).metric_history(M.TRAIN_LOSS) == [(1, 1.0), (2, 0.5)]
    with (
        pytest.raises(TrackingError, match="not found"),
        start_run(store, stage="x", run_id="0" * 32),
    ):
        pass


def test_registry_alias_and_version_resolve_to_the_run_artifacts(store, tmp_path) -> None:
    with start_run(store, stage="pretrain") as run:
        (tmp_path / "m").mkdir()
        (tmp_path / "m" / "model.safetensors").write_bytes(b"x")
        run.log_artifact(tmp_path / "m", "checkpoint")
    uri = run.uri
    version = register_model_dir(uri, run.run_id, "checkpoint", "reg-test", alias="best")
    expected = ArtifactRef(run.run_id, "checkpoint")
    assert resolve_artifact_ref("models:/reg-test@best", uri, "checkpoint") == expected
    assert resolve_artifact_ref(f"models:/reg-test/{version}", uri, "checkpoint") == expected
    assert resolve_artifact_ref(f"runs:/{run.run_id}", uri, "checkpoint") == expected
    got = download_artifacts(uri, expected, tmp_path / "dl")
    assert (got / "model.safetensors").read_bytes() == b"x"
    with pytest.raises(TrackingError, match="no such registered"):
        resolve_artifact_ref("models:/reg-test@nope", uri, "checkpoint")
    with pytest.raises(TrackingError, match="no such run"):
        resolve_artifact_ref("runs:/" + "0" * 32, uri, "checkpoint")
    with pytest.raises(TrackingError, match="no artifact"):
        download_artifacts(uri, ArtifactRef(run.run_id, "adapter"), tmp_path / "dl2")


def test_metric_names_are_prefixed_and_sanitised() -> None:
    names = [getattr(M, n) for n in M.__all__ if n.isupper()]
    assert all("/" in n for n in names)
    assert {n.split("/")[0] for n in names} <= {"train", "val", "eval", "perf", "model", "collect"}
    assert M.eval_metric("ALE/Breakout-v5", "return_mean") == "eval/ALE_Breakout-v5/return_mean"
    assert M.collect_metric("reach-v3", "steps") == "collect/reach-v3/steps"


def test_git_commit_falls_back_to_the_submitted_one(monkeypatch, tmp_path) -> None:
    """Inside a Ray job the shipped working dir has no .git: dtmem submit passes the commit."""
    import shutil

    import dtmem.tracking as tracking
    import dtmem.tracking_runs as runs  # git_commit's own module: it reads its __file__

    fake = tmp_path / "pkg" / "tracking_runs.py"  # a package location outside any git checkout
    fake.parent.mkdir()
    shutil.copy(runs.__file__, fake)
    monkeypatch.setattr(runs, "__file__", str(fake))
    monkeypatch.delenv("DTMEM_GIT_COMMIT", raising=False)
    assert tracking.git_commit() is None
    monkeypatch.setenv("DTMEM_GIT_COMMIT", "abc123")
    assert tracking.git_commit() == "abc123"


def test_redact_uri_strips_credentials_and_token_parameters() -> None:
    assert (
        redact_uri("https://user:s3cret@mlflow.example:5000/x") == "https://mlflow.example:5000/x"
    )
    assert redact_uri("http://tok@host:80") == "http://host:80"
    got = redact_uri("https://host/path?token=abc&run=1&X-Amz-Signature=zz&api_key=k")
    assert got == "https://host/path?run=1"
    for same in ("sqlite:////abs/mlflow.db", "sqlite:///rel.db", "http://127.0.0.1:5000", "x"):
        assert redact_uri(same) == same


def test_credentials_never_reach_params_or_the_logged_config(store, tmp_path) -> None:
    secret_uri = "https://alice:hunter2@mlflow.example/?token=hunter3"
    cfg = TrackingConfig(uri=secret_uri, experiment="t")
    params = config_params(cfg)
    assert params["uri"] == "https://mlflow.example/"
    with start_run(store, stage="collect", config=cfg) as run:
        pass
    logged = Path(run.client.download_artifacts(run.run_id, "config.yaml", str(tmp_path)))
    text = logged.read_text() + repr(run.client.get_run(run.run_id).data.params)
    assert "hunter" not in text and "alice" not in text and "mlflow.example" in text
    with pytest.raises(TrackingError) as err:
        check_tracking(f"http://bob:hunter2@127.0.0.1:{_free_port()}")
    assert "hunter2" not in str(err.value) and "bob" not in str(err.value)


def test_experiments_open_in_the_training_view(store) -> None:
    with start_run(store, stage="pretrain") as run:
        pass
    exp_id = run.client.get_run(run.run_id).info.experiment_id
    tags = run.client.get_experiment(exp_id).tags
    assert tags["mlflow.experimentKind"] == "custom_model_development"


def test_dataset_inputs_and_logged_models(store, tmp_path) -> None:
    model_dir = tmp_path / "model"
    model_dir.mkdir()
    (model_dir / "model.safetensors").write_bytes(b"weights")
    (model_dir / "model_config.json").write_text('{"d_model": 24}')
    with start_run(store, stage="pretrain") as run:
        log_dataset_input(run, "dtmem/mw/reach-v3-v0", "ab" * 32, "/data/reach", profile={"n": 3})
        model_id = log_logged_model(run, model_dir, "dtmem-model", step=5, params={"slots": 64})
        # a run name may hold '.', which MLflow refuses in a logged model's name
        dotted = log_logged_model(run, model_dir, "lr0.001", step=6)
    client = run.client
    inputs = client.get_run(run.run_id).inputs.dataset_inputs
    assert [(d.dataset.name, d.dataset.digest) for d in inputs] == [
        ("dtmem/mw/reach-v3-v0", "ab" * 18)
    ]
    assert inputs[0].tags[0].value == "training" and "/data/reach" in inputs[0].dataset.source
    from mlflow.entities import LoggedModelStatus

    model = client.get_logged_model(model_id)
    assert model.status == LoggedModelStatus.READY and model.model_type == "dtmem"
    assert model.source_run_id == run.run_id and model.params["slots"] == "64"
    outputs = client.get_run(run.run_id).outputs.model_outputs
    assert sorted((o.step, o.model_id) for o in outputs) == [(5, model_id), (6, dotted)]
    assert client.get_logged_model(dotted).name == "lr0-001"
    ref = resolve_artifact_ref(f"models:/{model_id}", run.uri, "checkpoint")
    assert ref.model_id == model_id and ref.run_id == run.run_id
    got = download_artifacts(run.uri, ref, tmp_path / "dl")
    assert (got / "model.safetensors").read_bytes() == b"weights"
    assert (got / "model_config.json").read_text() == '{"d_model": 24}'
    assert not (got / "MLmodel").exists()
    client.create_registered_model("lm-test")
    version = client.create_model_version("lm-test", f"models:/{model_id}", run_id=run.run_id)
    client.set_registered_model_alias("lm-test", "best", version.version)
    assert resolve_artifact_ref("models:/lm-test@best", run.uri, "checkpoint") == ref
    with pytest.raises(TrackingError, match="no such logged model"):
        resolve_artifact_ref("models:/m-" + "0" * 32, run.uri, "checkpoint")


@pytest.mark.parametrize(
    "ref",
    ["runs:/{id}/../..", "runs:/{id}/checkpoint/../../x", "runs:/../{id}", "runs:/{id}//etc"],
)
def test_model_references_cannot_leave_the_run(store, ref) -> None:
    with start_run(store, stage="pretrain") as run:
        pass
    with pytest.raises(TrackingError) as err:
        resolve_artifact_ref(ref.format(id=run.run_id), run.uri, "checkpoint")
    assert "\n" not in str(err.value)
    assert "leaves the run" in str(err.value) or "not a run id" in str(err.value)


def test_sigterm_ends_a_guarded_stage_killed_with_exit_143(store, capsys) -> None:
    """``ray job stop``, ``kill`` or a pod's stop: the stage unwinds as from Ctrl-C, its run
    ends KILLED (not left RUNNING), the exit code is 143, and SIGTERM's handler is restored."""
    from dtmem.cli import guarded

    before = signal.getsignal(signal.SIGTERM)
    runs = []

    def stage() -> None:
        with start_run(store, stage="pretrain") as run:
            runs.append(run)
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(30)  # interrupted by the signal at once

    with pytest.raises(typer.Exit) as exit_:
        guarded(stage)
    assert exit_.value.exit_code == 143
    assert capsys.readouterr().err.strip().splitlines()[-1] == "terminated"
    assert runs[0].client.get_run(runs[0].run_id).info.status == "KILLED"
    assert signal.getsignal(signal.SIGTERM) is before


def test_sigterm_still_interrupts_after_ray_init_installs_its_own_handler() -> None:
    """``ray.init`` replaces the SIGTERM handler (exit at once); ``ray_session`` starts Ray
    inside ``kept_across``, which puts the interrupting one back, and only if it was there."""
    import sys

    from dtmem.interrupts import Terminated, kept_across, sigterm_interrupts

    def rays(signum, frame) -> None:  # what ray.init installs for a driver
        sys.exit(signum)

    before = signal.getsignal(signal.SIGTERM)
    with sigterm_interrupts():
        with kept_across():
            signal.signal(signal.SIGTERM, rays)
        with pytest.raises(Terminated):
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(30)  # interrupted by the signal at once
    assert signal.getsignal(signal.SIGTERM) is before
    try:
        with kept_across():  # outside a guarded stage: Ray's handler stays
            signal.signal(signal.SIGTERM, rays)
        assert signal.getsignal(signal.SIGTERM) is rays
    finally:
        signal.signal(signal.SIGTERM, before)
