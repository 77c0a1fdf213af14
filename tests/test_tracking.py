"""dtmem.tracking against a real MLflow sqlite store in tmp: params, tags, metrics with steps,
artifacts, run status, resumption, the registry, and the store checks."""

from __future__ import annotations

import csv
import io
import socket
from pathlib import Path

import pytest

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
        datasets=(DatasetSpec(id="a/x-v0"), DatasetSpec(id="a/y-v0", weight=2.0)), context=5
    )
    params = config_params(data)
    assert params["datasets.0.id"] == "a/x-v0"
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

    fake = tmp_path / "pkg" / "tracking.py"  # a package location outside any git checkout
    fake.parent.mkdir()
    shutil.copy(tracking.__file__, fake)
    monkeypatch.setattr(tracking, "__file__", str(fake))
    monkeypatch.delenv("DTMEM_GIT_COMMIT", raising=False)
    assert tracking.git_commit() is None
    monkeypatch.setenv("DTMEM_GIT_COMMIT", "abc123")
    assert tracking.git_commit() == "abc123"
