"""The pretrain and finetune pipelines end to end on tiny Meta-World-like datasets written in
tmp: the smoke configs, what lands in MLflow, LoRA/frozen fine-tuning, bad input refused
before any compute, and a 2-worker Ray Train run that survives a killed worker and stops on
Ctrl-C."""

from __future__ import annotations

import os
import socket
from pathlib import Path

import pytest
import torch

from dtmem import metrics as M
from dtmem.config.base import ConfigError, load_config
from dtmem.config.train import FinetuneConfig, PretrainConfig
from dtmem.data.episodes import DatasetNotFoundError, ObservationShapeError
from dtmem.model import build_model
from dtmem.model.lora import LoRAError
from dtmem.tracking import TrackingError, attach, start_run
from dtmem.training.checkpoint import CheckpointError, export_model, load_checkpoint_model
from tests.test_training import tiny_model_config, write_metaworld_like

CONFIGS = Path(__file__).resolve().parents[1] / "pipelines" / "configs"
SMOKE_TASKS = ("reach-v3", "push-v3", "pick-place-v3", "bin-picking-v3")
TINY_MODEL = [
    "model.n_layer=1",
    "model.d_model=16",
    "model.n_head=2",
    "model.memory.slots=16",
    "model.dropout=0.0",
]


@pytest.fixture(scope="module")
def env(tmp_path_factory) -> dict[str, Path | str]:
    """Smoke-named datasets, one MLflow store and a checkpoint root shared by the module."""
    tmp = tmp_path_factory.mktemp("pipelines")
    root = tmp / "data"
    for i, task in enumerate(SMOKE_TASKS):
        write_metaworld_like(root, f"dtmem/smoke/{task}-expert-v0", task, steps=41, seed=i)
    return {"tmp": tmp, "root": root, "uri": f"sqlite:///{tmp}/mlflow.db"}


def common(env: dict[str, Path | str], name: str) -> list[str]:
    return [
        f"data.root={env['root']}",
        f"tracking.uri={env['uri']}",
        "tracking.system_metrics=false",
        f"checkpoint.dir={env['tmp']}/ckpt",
        f"run_name={name}",
        "progress=false",
    ]


def local(steps: int, every: int = 4) -> list[str]:
    return [
        "scaling.ray=false",
        "scaling.num_workers=1",
        f"optim.max_steps={steps}",
        f"checkpoint.every_steps={every}",
        "log_every=2",
        "optim.warmup_steps=2",
    ]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def no_compute(monkeypatch):
    """Training must not start: bad input is refused before it."""

    def refuse(*args, **kwargs):
        raise AssertionError("training started before the input was checked")

    monkeypatch.setattr("dtmem.training.launch.launch", refuse)


# --------------------------------------------------------------------------- configs


@pytest.mark.parametrize(
    "path",
    sorted(
        p
        for d in ("smoke", "atari", "metaworld")
        for p in (CONFIGS / d).glob("*.yaml")
        if p.name.startswith(("pretrain", "finetune"))
    ),
    ids=lambda p: f"{p.parent.name}/{p.name}",
)
def test_every_training_config_validates(path: Path) -> None:
    if path.name.startswith("pretrain"):
        cfg = load_config(PretrainConfig, path)
        assert cfg.data.context == cfg.model.context and cfg.registry.name
    else:
        ft = load_config(FinetuneConfig, path)
        assert ft.mode == "lora" and ft.pretrained.startswith("models:/")


def test_paper_size_configs() -> None:
    atari = load_config(PretrainConfig, CONFIGS / "atari" / "pretrain.yaml")
    assert len(atari.data.datasets) == 17 and atari.scaling.num_workers == 8
    assert (atari.model.n_layer, atari.model.d_model, atari.model.n_head) == (4, 512, 8)
    params = sum(p.numel() for p in build_model(atari.model).parameters())
    assert 18e6 < params < 23e6  # the paper's ~20M
    mw = load_config(PretrainConfig, CONFIGS / "metaworld" / "pretrain.yaml")
    assert len(mw.data.datasets) == 45
    held = load_config(FinetuneConfig, CONFIGS / "metaworld" / "finetune.yaml")
    assert held.data.episode_fraction == 0.1
    assert held.data.datasets[0].id not in {d.id for d in mw.data.datasets}


# --------------------------------------------------------------------------- pipelines, in-process


def test_pretrain_then_finetune_lora_and_frozen(env) -> None:
    from pipelines.finetune import main as finetune_main
    from pipelines.finetune import run_finetune
    from pipelines.pretrain import main as pretrain_main

    pretrain_main(
        CONFIGS / "smoke" / "pretrain.yaml",
        [*common(env, "pre.v1"), *local(8), *TINY_MODEL],  # '.': no logged model name has one
    )
    uri = str(env["uri"])
    pre = load_checkpoint_model("models:/dtmem-smoke@pretrained", tracking_uri=uri)
    run_id = pre.meta["run_id"]
    run = attach(uri, run_id).client.get_run(run_id)
    assert run.info.status == "FINISHED"
    params, tags = run.data.params, run.data.tags
    assert params["model.d_model"] == "16" and params["optim.max_steps"] == "8"
    assert params["data.datasets.2.id"] == "dtmem/smoke/pick-place-v3-expert-v0"
    assert int(params["model.params_total"]) == sum(p.numel() for p in pre.model.parameters())
    assert not handle_has(uri, run_id, "model/params")  # a param, not a one-point chart
    assert tags["dtmem.stage"] == "pretrain" and "dtmem.version.ray" in tags
    assert tags["data.dtmem/smoke/reach-v3-expert-v0.content_hash"] != "unknown"
    assert "dtmem.git_commit" in tags
    handle = attach(uri, run_id)
    for key in (
        M.TRAIN_LOSS,
        M.TRAIN_LOSS_ACTION,
        M.TRAIN_LOSS_RETURN,
        M.TRAIN_LOSS_REWARD,
        M.TRAIN_LR,
        M.PERF_STEPS_PER_S,
        M.PERF_TOKENS_PER_S,
    ):
        assert [s for s, _ in handle.metric_history(key)] == [2, 4, 6, 8], key
    lrs = [v for _, v in handle.metric_history(M.TRAIN_LR)]
    assert lrs[0] == pytest.approx(1e-3) and lrs[-1] == pytest.approx(1e-3)
    client = handle.client
    top = {a.path for a in client.list_artifacts(run_id)}
    assert {"config.yaml", "loss_curve.png"} <= top
    # the model is a flavourless logged model of the run, loadable from its models:/ URI
    model_uri = tags["dtmem.model_uri"]
    logged = client.get_logged_model(model_uri.removeprefix("models:/"))
    assert logged.source_run_id == run_id and logged.status == "READY"
    assert logged.model_type == "dtmem" and logged.name == "pre-v1"
    files = {a.path for a in client.list_logged_model_artifacts(logged.model_id)}
    assert {"model.safetensors", "model_config.json", "meta.json"} <= files
    assert not any(f.endswith((".pkl", ".pt", "MLmodel")) for f in files)
    by_uri = load_checkpoint_model(model_uri, tracking_uri=uri).model.state_dict()
    assert all(torch.equal(by_uri[k], v) for k, v in pre.model.state_dict().items())
    inputs = client.get_run(run_id).inputs.dataset_inputs
    digests = {d.dataset.name: d.dataset.digest for d in inputs}
    hashes = {k.split(".")[1]: v for k, v in tags.items() if k.endswith(".content_hash")}
    assert digests.keys() == set(hashes) and len(digests) == 3
    assert all(hashes[n].startswith(d) for n, d in digests.items())
    assert pre.config.d_model == 16 and pre.state_stats is not None

    # LoRA: only adapters train; the run logs the adapter and a merged model
    lora = run_finetune(
        load_config(
            FinetuneConfig,
            CONFIGS / "smoke" / "finetune.yaml",
            [*common(env, "ft-lora"), *local(6, every=3), "lora.rank=3", "lora.alpha=6.0"],
        )
    )
    assert lora.steps == 6 and lora.adapter_dir is not None
    assert 0 < lora.params_trainable < lora.params_total / 4
    ft = attach(uri, lora.run_id)
    ft_params = ft.client.get_run(lora.run_id).data.params
    assert int(ft_params["model.params_trainable"]) == lora.params_trainable
    assert ft.client.get_run(lora.run_id).data.tags["dtmem.pretrained_run_id"] == run_id
    assert "adapter" in {a.path for a in ft.client.list_artifacts(lora.run_id)}
    base = pre.model.state_dict()
    tuned = _peft_weights(lora.run_dir / "step_00000006" / "model.safetensors")
    adapters = {k: v for k, v in tuned.items() if "lora_" in k}
    assert adapters and any(v.abs().sum() > 0 for k, v in adapters.items() if "lora_B" in k)
    others = {_base_name(k): v for k, v in tuned.items() if "lora_" not in k}
    assert others.keys() == base.keys()
    assert all(torch.equal(others[k], base[k]) for k in base), "a frozen weight changed"
    merged = load_checkpoint_model(lora.checkpoint_dir).model.state_dict()
    assert not torch.equal(
        merged["blocks.0.memory.read_key.weight"], base["blocks.0.memory.read_key.weight"]
    )
    assert torch.equal(merged["blocks.0.attn.qkv.weight"], base["blocks.0.attn.qkv.weight"])

    # frozen: no training, the pretrained weights packaged as this run's checkpoint
    finetune_main(
        CONFIGS / "smoke" / "finetune.yaml",
        [*common(env, "ft-frozen"), "mode=frozen", "registry.alias=zero-shot"],
    )
    frozen = load_checkpoint_model("models:/dtmem-smoke-finetuned@zero-shot", tracking_uri=uri)
    assert frozen.meta["mode"] == "frozen" and frozen.meta["step"] == 0
    assert all(torch.equal(frozen.model.state_dict()[k], base[k]) for k in base)


def test_restarting_the_job_under_its_run_name_continues_the_same_run(env, monkeypatch) -> None:
    """The job dies at step 7 (checkpoint at 4); started again with the same run name it
    continues the same MLflow run from step 5: every step logged once, in order. Started a
    third time, the finished run is reported and returned, nothing trained or logged."""
    from dtmem.training.faults import FAIL_AT_STEP_ENV, SimulatedFailure
    from pipelines.pretrain import run_pretrain

    overrides = [
        *common(env, "restart"),
        *local(10),
        *TINY_MODEL,
        "log_every=1",
        "registry.name=null",
    ]
    failing = load_config(PretrainConfig, CONFIGS / "smoke" / "pretrain.yaml", overrides)
    monkeypatch.setenv(FAIL_AT_STEP_ENV, "7")
    with pytest.raises(SimulatedFailure):
        run_pretrain(failing)
    result = run_pretrain(failing)  # the marker file keeps the failure to once
    run = attach(str(env["uri"]), result.run_id)
    info = run.client.get_run(result.run_id)
    assert info.info.status == "FINISHED"
    assert info.data.tags["dtmem.resumed_from_step"] == "4"
    assert [s for s, _ in run.metric_history(M.TRAIN_LOSS)] == list(range(1, 11))
    assert result.steps == 10 and [s for s, _ in result.loss_history] == list(range(1, 11))
    assert not result.already_finished

    again = run_pretrain(failing)
    assert again.already_finished and again.run_id == result.run_id
    assert again.steps == 10 and again.model_uri == result.model_uri
    assert again.loss_history == result.loss_history
    models = run.client.search_logged_models(experiment_ids=[info.info.experiment_id])
    assert sum(m.source_run_id == result.run_id for m in models) == 1  # not logged twice


def handle_has(uri: str, run_id: str, metric: str) -> bool:
    return bool(attach(uri, run_id).metric_history(metric))


def _peft_weights(path: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(str(path))


def _base_name(peft_name: str) -> str:
    """``base_model.model.blocks.0.memory.add.base_layer.weight`` -> ``blocks.0.memory.add.weight``."""
    return peft_name.removeprefix("base_model.model.").replace(".base_layer.", ".")


def test_full_mode_trains_every_weight(env) -> None:
    from dtmem.training.stage import prepare_finetune

    pre = env["tmp"] / "plain-pre"  # type: ignore[operator]
    cfg = tiny_model_config(context=10, return_scale=100.0)
    export_model(pre, model=build_model(cfg), model_config=cfg, state_stats=None, meta={})
    ft = load_config(
        FinetuneConfig,
        CONFIGS / "smoke" / "finetune.yaml",
        [
            *common(env, "ft-full"),
            *local(4),
            f"pretrained={pre}",
            "mode=full",
            "data.normalize_states=false",
        ],
    )
    plan = prepare_finetune(ft)
    assert plan.counts.trainable == plan.counts.total > 0


# --------------------------------------------------------------------------- bad input


def _one_line_error(exc: pytest.ExceptionInfo[BaseException]) -> str:
    text = str(exc.value)
    assert text and "\n" not in text, text
    return text


def test_bad_pretrain_input_fails_before_compute(env, no_compute) -> None:
    from pipelines.pretrain import main

    smoke = CONFIGS / "smoke" / "pretrain.yaml"
    base = [*common(env, "bad"), *local(4), *TINY_MODEL]
    cases = [
        (["data.context=5"], ConfigError, "data.context=5 differs from model.context=10"),
        (["model.obs_dim=17"], ObservationShapeError, r"expects \(17,\)"),
        (
            ["data.datasets=[{id: dtmem/smoke/nowhere-v0}]"],
            DatasetNotFoundError,
            "nowhere",
        ),
        ([f"tracking.uri=http://127.0.0.1:{_free_port()}"], TrackingError, "unreachable"),
        (
            ["data.datasets=[{id: dtmem/smoke/reach-v3-expert-v0, env: push-v3}]"],
            ValueError,
            "push-v3",
        ),
    ]
    for extra, error, match in cases:
        with pytest.raises(error, match=match) as exc:
            main(smoke, [*base, *extra])
        _one_line_error(exc)


def test_bad_finetune_input_fails_before_compute(env, no_compute) -> None:
    from pipelines.finetune import main

    smoke = CONFIGS / "smoke" / "finetune.yaml"
    base = [*common(env, "bad-ft"), *local(4), "data.normalize_states=false"]
    plain_dir = env["tmp"] / "plain-dt"  # type: ignore[operator]
    plain = tiny_model_config(context=10, return_scale=100.0, memory=None)
    export_model(plain_dir, model=build_model(plain), model_config=plain, state_stats=None, meta={})
    with start_run(
        load_config(FinetuneConfig, smoke, base).tracking, stage="pretrain", run_name="empty"
    ) as empty:
        pass
    cases = [
        ([f"pretrained={plain_dir}"], LoRAError, "match no module"),
        (
            [
                f"pretrained={plain_dir}",
                "mode=full",
                "model.d_model=24",
                "model.memory=null",
                "model.context=10",
                "model.return_scale=100.0",
            ],
            CheckpointError,
            "another architecture",
        ),
        ([f"pretrained=runs:/{empty.run_id}"], TrackingError, "no artifact 'checkpoint'"),
        (["pretrained=models:/no-such-model@x"], TrackingError, "no such registered"),
        ([f"pretrained={env['tmp']}/missing"], CheckpointError, "no such checkpoint"),
        (
            [f"pretrained={plain_dir}", "mode=full", "data.normalize_states=true"],
            ValueError,
            "normalize_states",
        ),
    ]
    for extra, error, match in cases:
        with pytest.raises(error, match=match) as exc:
            main(smoke, [*base, *extra])
        _one_line_error(exc)


# --------------------------------------------------------------------------- Ray Train


@pytest.mark.slow
def test_ray_two_workers_recover_from_a_killed_worker(env, ray_session, monkeypatch) -> None:
    """Rank 1 exits hard at step 9 (last checkpoint: 8); Ray restarts the worker group, which
    resumes from the checkpoint: the MLflow loss curve has every step once, 1..20."""
    from pipelines.pretrain import run_pretrain

    cfg = load_config(
        PretrainConfig,
        CONFIGS / "smoke" / "pretrain.yaml",
        [
            *common(env, "ray2"),
            *TINY_MODEL,
            "scaling.num_workers=2",
            "optim.max_steps=20",
            "optim.lr=1e-2",
            "optim.warmup_steps=2",
            "checkpoint.every_steps=4",
            "log_every=1",
            "failure.max_failures=1",
            "data.batch_size=8",
            "registry.name=null",
        ],
    )
    monkeypatch.setenv("DTMEM_TEST_FAIL_AT_STEP", "9")
    result = run_pretrain(cfg)
    assert (result.run_dir / ".failed_once").read_text() == "step 9\n"  # it did fail
    history = attach(str(env["uri"]), result.run_id).metric_history(M.TRAIN_LOSS)
    assert [s for s, _ in history] == list(range(1, 21))
    losses = [v for _, v in history]
    assert sum(losses[-3:]) < 0.8 * sum(losses[:3]), losses
    assert result.steps == 20 and result.final_loss == pytest.approx(losses[-1])
    assert load_checkpoint_model(result.checkpoint_dir).meta["step"] == 20

    too_many = cfg.scaling.model_copy(update={"num_workers": 3})
    with pytest.raises(ValueError, match="need 3 CPUs"):
        run_pretrain(cfg.model_copy(update={"scaling": too_many, "run_name": "ray3"}))


def test_train_polls_its_workers_every_half_second_unless_the_environment_says(
    monkeypatch,
) -> None:
    """Ray passes the driver's RAY_TRAIN_HEALTH_CHECK_INTERVAL_S to Train's controller when
    ``fit`` starts it; ``train_poll`` sets it around ``fit`` and restores the environment."""
    from dtmem.training.launch import TRAIN_POLL_S, train_poll

    name = "RAY_TRAIN_HEALTH_CHECK_INTERVAL_S"
    monkeypatch.delenv(name, raising=False)
    with train_poll():
        assert os.environ[name] == str(TRAIN_POLL_S) == "0.5"
    assert name not in os.environ
    monkeypatch.setenv(name, "3")
    with train_poll():
        assert os.environ[name] == "3"
    assert os.environ[name] == "3"


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_ctrl_c_during_ray_train_unwinds_the_stage(env, ray_session) -> None:
    """Ctrl-C once 2 Ray Train workers have checkpointed: KeyboardInterrupt out of the stage
    (Train's own handler made it SystemExit(1), the run FAILED), the run ends KILLED, the
    Train run is aborted (its CPUs free again) and SIGINT's handler is the one before."""
    import signal
    import time

    import ray
    from mlflow.tracking import MlflowClient

    from pipelines.pretrain import run_pretrain
    from tests.helpers import signal_when

    cfg = load_config(
        PretrainConfig,
        CONFIGS / "smoke" / "pretrain.yaml",
        [
            *common(env, "ray-ctrl-c"),
            *TINY_MODEL,
            "scaling.num_workers=2",
            "optim.max_steps=3000",  # minutes: the interrupt comes long before the end
            "checkpoint.every_steps=4",
            "data.batch_size=8",
            "registry.name=null",
        ],
    )
    run_dir = Path(env["tmp"]) / "ckpt" / "ray-ctrl-c"
    before = signal.getsignal(signal.SIGINT)
    sent = signal_when(lambda: any(run_dir.glob("step_*")), signal.SIGINT)
    with pytest.raises(KeyboardInterrupt):
        run_pretrain(cfg)
    stopped = time.monotonic()
    assert any(run_dir.glob("step_*")) and stopped - sent[0] < 20
    assert signal.getsignal(signal.SIGINT) is before
    client = MlflowClient(str(env["uri"]))
    ids = [e.experiment_id for e in client.search_experiments()]
    (run,) = client.search_runs(ids, "attributes.run_name = 'ray-ctrl-c'")
    assert run.info.status == "KILLED"
    deadline = time.monotonic() + 30  # room for a slow host
    while ray.available_resources().get("CPU", 0.0) < ray.cluster_resources()["CPU"]:
        assert time.monotonic() < deadline, "the Train run's workers still hold their CPUs"
        time.sleep(0.2)


# --------------------------------------------------------------------------- watching a run


def test_validation_loss_rollout_curves_and_what_the_terminal_shows(env, capsys) -> None:
    """Held-out episodes are never trained on and give val/loss every 2 steps; rollouts of
    the model in training give eval curves every 4; the terminal says at once what starts
    and ends with the run id and the `dtmem ui` line."""
    from dtmem.training.data import split_sources
    from pipelines.pretrain import run_pretrain

    cfg = load_config(
        PretrainConfig,
        CONFIGS / "smoke" / "pretrain.yaml",
        [
            *common(env, "watched"),
            *local(8),
            *TINY_MODEL,
            "registry.name=null",
            "data.datasets=[{id: dtmem/smoke/reach-v3-expert-v0, env: reach-v3}]",
            "data.batch_size=4",
            "validation.episodes=1",
            "validation.every_steps=2",
            "validation.batches=2",
            "eval_curve.every_steps=4",
            "eval_curve.episodes=2",
            "eval_curve.max_steps=5",
            "eval_curve.target_return=10.0",
        ],
    )
    train, held = split_sources(cfg.data, 1)
    for t, h in zip(train, held, strict=True):
        assert h.episode_ids.size == 1 and t.episode_ids.size == 5  # 6 episodes each
        assert not set(h.episode_ids) & set(t.episode_ids)
    assert [h.episode_ids.tolist() for h in split_sources(cfg.data, 1)[1]] == [
        h.episode_ids.tolist() for h in held
    ]  # the same choice every time
    result = run_pretrain(cfg)
    run = attach(str(env["uri"]), result.run_id)
    val = run.metric_history(M.VAL_LOSS)
    assert [s for s, _ in val] == [2, 4, 6, 8] and all(v > 0 for _, v in val)
    assert [s for s, _ in run.metric_history(M.VAL_LOSS_ACTION)] == [2, 4, 6, 8]
    curve = run.metric_history(M.eval_metric("reach-v3", "return_mean"))
    assert [s for s, _ in curve] == [4, 8]
    success = run.metric_history(M.eval_metric("reach-v3", "success_rate"))
    assert [s for s, _ in success] == [4, 8] and all(0.0 <= v <= 1.0 for _, v in success)
    assert [s for s, _ in run.metric_history(M.EVAL_RETURN_MEAN)] == [4, 8]
    out = capsys.readouterr().out.strip().splitlines()
    assert out[0].startswith("dtmem pretrain: watched, 0/8 steps, in this process")
    assert str(result.run_dir) in out[0]
    assert result.run_id in out[-1] and "dtmem ui" in out[-1]


def test_a_lost_tracking_server_delays_logging_but_never_duplicates_it(env, monkeypatch) -> None:
    """The MLflow client fails (simulated at the client layer, RunHandle.log_metrics):
    first for three calls, then the server comes back: every step lands once, in order.
    Then it goes away from step 5 to the end: training finishes and checkpoints, the stage
    stops with one line; run again once the server is back, it trains nothing and logs the
    missing steps once."""
    from dtmem.tracking import RunHandle
    from dtmem.training import monitor
    from pipelines.pretrain import run_pretrain

    real = RunHandle.log_metrics
    state = {"fail_calls": 3, "down_from": 10**9}

    def flaky(self, metrics, step):  # type: ignore[no-untyped-def]
        if M.TRAIN_LOSS in metrics and (state["fail_calls"] > 0 or step >= state["down_from"]):
            state["fail_calls"] -= 1
            raise ConnectionError("connection refused")
        return real(self, metrics, step)

    monkeypatch.setattr(RunHandle, "log_metrics", flaky)
    monkeypatch.setattr(monitor, "FIRST_BACKOFF_S", 0.001)
    monkeypatch.setattr(monitor, "FINAL_WAIT_S", 0.05)
    overrides = [*common(env, "flaky"), *local(8), *TINY_MODEL, "log_every=1"]
    cfg = load_config(PretrainConfig, CONFIGS / "smoke" / "pretrain.yaml", overrides)
    result = run_pretrain(
        cfg.model_copy(update={"registry": cfg.registry.model_copy(update={"name": None})})
    )
    history = attach(str(env["uri"]), result.run_id).metric_history(M.TRAIN_LOSS)
    assert [s for s, _ in history] == list(range(1, 9)) and state["fail_calls"] <= 0

    down = cfg.model_copy(update={"run_name": "flaky-down"})
    down = down.model_copy(update={"registry": down.registry.model_copy(update={"name": None})})
    state.update(fail_calls=0, down_from=5)
    with pytest.raises(TrackingError, match="unreachable") as exc:
        run_pretrain(down)
    text = _one_line_error(exc)
    assert "steps 5..8 not logged" in text
    run_dir = env["tmp"] / "ckpt" / "flaky-down"  # type: ignore[operator]
    assert (run_dir / "step_00000008").is_dir()  # training went on, checkpoints written
    state["down_from"] = 10**9  # the server is back
    again = run_pretrain(down)
    history = attach(str(env["uri"]), again.run_id).metric_history(M.TRAIN_LOSS)
    assert [s for s, _ in history] == list(range(1, 9))
    assert not (run_dir / monitor.UNLOGGED_FILE).exists()


def test_a_foreign_optimizer_file_is_one_line_before_compute(env, no_compute) -> None:
    """A resume whose optimizer.pt holds a pickled object (not plain tensors) ends in one
    line and exit code 2 from the CLI, before training starts."""
    from typer.testing import CliRunner

    from dtmem.cli import app
    from dtmem.training.checkpoint import OPTIMIZER_FILE, latest_checkpoint

    run_dir = env["tmp"] / "ckpt" / "foreign"  # type: ignore[operator]
    cfg = tiny_model_config(context=10, return_scale=100.0)
    from dtmem.training.checkpoint import save_checkpoint

    model = build_model(cfg)
    save_checkpoint(
        run_dir,
        2,
        model=model,
        model_config=cfg,
        optimizer=torch.optim.AdamW(model.parameters()),
        trainer_state={"step": 2, "loss_history": [], "scheduler": {}},
        sampler_state={},
        state_stats=None,
        rank=0,
        world_size=1,
        keep_last=1,
        barrier=lambda: None,
    )
    latest = latest_checkpoint(run_dir)
    assert latest is not None
    torch.save({"state": _NotATensor()}, latest / OPTIMIZER_FILE)
    args = [
        "pretrain",
        str(CONFIGS / "smoke" / "pretrain.yaml"),
        *[x for o in [*common(env, "foreign"), *local(4)] for x in ("--set", o)],
        *[
            x
            for o in ["model.n_layer=1", "model.d_model=22", "model.n_head=2"]
            for x in ("--set", o)
        ],
        *("--set", "model.memory={slots: 17, width: 10, heads: 2}"),
        *("--set", "model.obs_dim=39"),
        *("--set", "data.normalize_states=false"),
    ]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 2, result.output
    errors = [ln for ln in result.output.splitlines() if ln.startswith("error:")]
    assert len(errors) == 1 and "not a plain tensor file" in errors[0], result.output
    assert OPTIMIZER_FILE in errors[0] and "Traceback" not in result.output


class _NotATensor:
    """Something ``torch.load(weights_only=True)`` refuses to unpickle."""


def test_a_nearly_full_disk_is_refused_before_compute(env, no_compute, monkeypatch) -> None:
    import shutil as sh

    from dtmem.training.checks import RunDirError
    from pipelines.pretrain import main

    real = sh.disk_usage
    monkeypatch.setattr(
        "dtmem.training.checks.shutil.disk_usage",
        lambda p: real(p)._replace(free=10 * 2**20),
    )
    with pytest.raises(RunDirError, match="10 MB free") as exc:
        main(CONFIGS / "smoke" / "pretrain.yaml", [*common(env, "full"), *local(4), *TINY_MODEL])
    _one_line_error(exc)
