"""The README's main job, end to end on a tiny budget: every stage runs and lands in MLflow."""

from __future__ import annotations

from pathlib import Path

import pytest
from rich.console import Console

from dtmem.config.quickstart import QuickstartConfig
from pipelines.quickstart import run_quickstart

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_quickstart_runs_every_stage(ray_session, tmp_path, monkeypatch) -> None:
    from mlflow.tracking import MlflowClient

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.chdir(tmp_path)  # checkpoints/ and sweeps/ land here
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.setenv("MINARI_DATASETS_PATH", str(tmp_path / "datasets"))
    cfg = QuickstartConfig(
        collect=REPO / "pipelines/configs/smoke/collect.yaml",
        pretrain=REPO / "pipelines/configs/smoke/pretrain.yaml",
        finetune=REPO / "pipelines/configs/smoke/finetune.yaml",
        evaluate=REPO / "pipelines/configs/smoke/evaluate.yaml",
        sweep=REPO / "tuning/smoke.yaml",
        sweep_slots=(8,),
        collect_episodes=4,
        pretrain_steps=20,
        finetune_steps=10,
        eval_episodes=1,
        run_prefix="qs-test",
    )
    result = run_quickstart(cfg, console=Console(width=100))

    assert list(result.times.seconds) == [
        "collect",
        "pretrain DT-Mem",
        "pretrain DT",
        "finetune",
        "evaluate",
        "sweep",
    ]
    models = {row["model"]: row for row in result.rows}
    assert set(models) == {"DT-Mem", "plain DT", "DT-Mem + LoRA"}
    assert models["plain DT"]["parameters"] < models["DT-Mem"]["parameters"]
    lora = models["DT-Mem + LoRA"]
    assert 0 < lora["trained"] < lora["parameters"]  # only the adapters trained
    assert 0.0 <= lora["bin-picking-v3"] <= 1.0
    assert [r["model.memory.slots"] for r in result.sweep_rows] == [8]

    client = MlflowClient(tracking_uri=uri)
    experiment = client.get_experiment_by_name("dtmem-quickstart")
    assert experiment is not None
    runs = client.search_runs([experiment.experiment_id])
    assert all(r.info.status == "FINISHED" for r in runs)
    top = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    stages = sorted(r.data.tags["dtmem.stage"] for r in top)
    expected = ["collect", "evaluate", "evaluate", "evaluate", "finetune", "pretrain", "pretrain"]
    assert stages == [*expected, "sweep"]
    (sweep,) = [r for r in top if r.data.tags["dtmem.stage"] == "sweep"]
    trials = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == sweep.info.run_id]
    assert len(trials) == 1
