"""The training loop without Ray: schedule, optimiser groups, one step, the loop, atomic
checkpoints and exact resumption, model export and loading."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from dtmem.config.data import DataConfig, DatasetSpec
from dtmem.config.model import MemoryConfig, ModelConfig
from dtmem.config.train import CheckpointConfig, OptimConfig, PretrainConfig, ScalingConfig
from dtmem.data import synthetic
from dtmem.model import build_model
from dtmem.training.checkpoint import (
    FINAL_MODEL,
    MANIFEST_FILE,
    CheckpointError,
    export_model,
    latest_checkpoint,
    list_checkpoints,
    load_checkpoint_model,
    load_model_dir,
    load_training_state,
    save_checkpoint,
)
from dtmem.training.faults import FAIL_AT_STEP_ENV, SimulatedFailure
from dtmem.training.loop import (
    TrainJob,
    build_train_model,
    local_context,
    run_worker,
    train_step,
)
from dtmem.training.optim import build_optimizer, build_scheduler, lr_factor, param_groups
from tests.helpers import random_batch

OBS, ACT = 39, 4  # Meta-World's sizes (the sampler and model must agree on them)
K = 7


def write_metaworld_like(
    root: Path, dataset_id: str, task: str, episodes: int = 6, steps: int = 23, seed: int = 0
) -> None:
    """Meta-World's shapes, a learnable action (dtmem.data.synthetic)."""
    synthetic.write_metaworld_like(
        root, dataset_id, task, episodes=episodes, steps=steps, seed=seed
    )


def tiny_model_config(**kw: object) -> ModelConfig:
    args: dict[str, object] = dict(
        obs_dim=OBS,
        act_dim=ACT,
        context=K,
        n_layer=1,
        n_head=2,
        d_model=22,
        dropout=0.1,
        memory=MemoryConfig(slots=17, width=10, heads=2),
    )
    args.update(kw)
    return ModelConfig.model_validate(args)


def tiny_pretrain_config(root: Path, tmp: Path, **kw: object) -> PretrainConfig:
    args: dict[str, object] = dict(
        model=tiny_model_config(),
        data=DataConfig(
            datasets=(DatasetSpec(id="tt/reach-v3-v0", env="reach-v3"),),
            root=str(root),
            context=K,
            batch_size=3,
            normalize_states=True,
        ),
        optim=OptimConfig(lr=3e-3, warmup_steps=2, max_steps=12),
        scaling=ScalingConfig(ray=False),
        checkpoint=CheckpointConfig(every_steps=4, keep_last=2, dir=str(tmp / "ckpt")),
        log_every=1,
        progress=False,
        run_name="t",
    )
    args.update(kw)
    return PretrainConfig.model_validate(args)


@pytest.fixture
def data_root(tmp_path: Path) -> Path:
    root = tmp_path / "data"
    write_metaworld_like(root, "tt/reach-v3-v0", "reach-v3")
    return root


def _job(cfg: PretrainConfig) -> TrainJob:
    from dtmem.training.data import open_train_data

    stats = open_train_data(cfg, None, (OBS,)).state_stats
    run_dir = Path(cfg.checkpoint.dir) / str(cfg.run_name)
    return TrainJob("pretrain", cfg, cfg.model, str(run_dir), state_stats=stats)


# --------------------------------------------------------------------------- optimiser


def test_warmup_then_constant_or_cosine() -> None:
    cfg = OptimConfig(lr=1.0, warmup_steps=4, max_steps=14)
    assert [lr_factor(s, cfg) for s in range(6)] == [0.25, 0.5, 0.75, 1.0, 1.0, 1.0]
    cos = OptimConfig(lr=1.0, warmup_steps=4, max_steps=14, decay="cosine", min_lr_ratio=0.1)
    assert lr_factor(4, cos) == pytest.approx(1.0)
    assert lr_factor(9, cos) == pytest.approx(0.55)  # half way: (1 + 0.1) / 2
    assert lr_factor(14, cos) == pytest.approx(0.1)
    model = torch.nn.Linear(3, 5)
    opt = build_optimizer(model, cos)
    sched = build_scheduler(opt, cos)
    seen = []
    for _ in range(5):
        seen.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert seen == pytest.approx([0.25, 0.5, 0.75, 1.0, 1.0])
    assert json.loads(json.dumps(sched.state_dict()))["last_epoch"] == 5  # JSON-safe state


def test_weight_decay_only_on_matrices() -> None:
    model = build_model(tiny_model_config())
    decay, no_decay = param_groups(model, 0.1)
    names = {id(p): n for n, p in model.named_parameters()}
    decayed = {names[id(p)] for p in decay["params"]}  # type: ignore[attr-defined]
    kept = {names[id(p)] for p in no_decay["params"]}  # type: ignore[attr-defined]
    assert "blocks.0.attn.qkv.weight" in decayed
    assert "blocks.0.memory.read_key.weight" in decayed
    assert not any(n.endswith(".bias") or "ln_" in n for n in decayed)
    assert "pos_emb" in kept and any(n.endswith("initial_memory") for n in kept)
    assert len(decayed) + len(kept) == len(names)


# --------------------------------------------------------------------------- one step


def test_train_step_lowers_the_loss_and_only_moves_trainable_weights() -> None:
    cfg = tiny_model_config(dropout=0.0)
    torch.manual_seed(0)
    model = build_model(cfg)
    model.action_head.weight.requires_grad_(False)
    frozen = model.action_head.weight.detach().clone()
    optim = OptimConfig(lr=1e-2, warmup_steps=0, max_steps=25)
    opt = build_optimizer(model, optim)
    sched = build_scheduler(opt, optim)
    batch = random_batch(cfg, batch=3)
    losses = []
    for _ in range(25):
        parts, grad_norm = train_step(model, batch, opt, sched, grad_clip=1.0)
        losses.append(parts.total.item())
        assert torch.isfinite(grad_norm)
    assert losses[-1] < 0.5 * losses[0]
    assert torch.equal(model.action_head.weight, frozen)
    assert parts.returns.item() == 0.0 and parts.reward.item() == 0.0  # no Atari heads


# --------------------------------------------------------------------------- the loop


def test_loop_trains_checkpoints_and_exports(data_root, tmp_path) -> None:
    data = DataConfig(
        datasets=(DatasetSpec(id="tt/reach-v3-v0", env="reach-v3"),),
        root=str(data_root),
        context=K,
        batch_size=8,
        normalize_states=True,
    )
    optim = OptimConfig(lr=1e-2, warmup_steps=2, max_steps=40)
    cfg = tiny_pretrain_config(data_root, tmp_path, data=data, optim=optim)
    job = _job(cfg)
    state = run_worker(job, local_context())
    history = state["loss_history"]
    assert [s for s, _ in history] == list(range(1, 41))
    first, last = np.mean([v for _, v in history[:5]]), np.mean([v for _, v in history[-5:]])
    assert last < 0.8 * first, (first, last)
    run_dir = Path(job.run_dir)
    assert [s for s, _ in list_checkpoints(run_dir)] == [36, 40]  # keep_last=2
    loaded = load_checkpoint_model(run_dir)  # a run directory resolves to final/model
    assert loaded.path == run_dir / FINAL_MODEL
    assert loaded.config == cfg.model
    assert loaded.state_stats is not None and loaded.state_stats.mean.shape == (OBS,)
    assert loaded.meta["step"] == 40 and not loaded.model.training


def test_interrupted_run_resumes_exactly(data_root, tmp_path, monkeypatch) -> None:
    """A failure at step 7 (last checkpoint: 4) and a restart give the same weights and loss
    curve as an uninterrupted run: data position, optimiser, schedule and RNG all resume."""
    straight = tiny_pretrain_config(data_root, tmp_path / "a")
    broken = tiny_pretrain_config(data_root, tmp_path / "b")
    ref = run_worker(_job(straight), local_context())
    monkeypatch.setenv(FAIL_AT_STEP_ENV, "7")
    with pytest.raises(SimulatedFailure):
        run_worker(_job(broken), local_context())
    run_dir = Path(_job(broken).run_dir)
    assert latest_checkpoint(run_dir) == run_dir / "step_00000004"
    resumed = run_worker(_job(broken), local_context())
    assert resumed["step"] == ref["step"] == 12
    assert [s for s, _ in resumed["loss_history"]] == list(range(1, 13))
    values = [v for _, v in resumed["loss_history"]]
    assert values == pytest.approx([v for _, v in ref["loss_history"]], rel=1e-6)
    a = load_model_dir(Path(_job(straight).run_dir) / FINAL_MODEL).model.state_dict()
    b = load_model_dir(run_dir / FINAL_MODEL).model.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_on_checkpoint_runs_after_every_checkpoint(data_root, tmp_path) -> None:
    """Checkpoints every 4 steps and at the end (10): the callback sees each one on disk."""
    cfg = tiny_pretrain_config(data_root, tmp_path, optim=OptimConfig(lr=1e-3, max_steps=10))
    job = _job(cfg)
    run_dir = Path(job.run_dir)
    calls: list[dict[str, object]] = []

    def on_checkpoint(**kw: object) -> None:
        step = kw["step"]
        assert latest_checkpoint(run_dir) == run_dir / f"step_{step:08d}"
        state = kw["trainer_state"]
        assert isinstance(state, dict) and state["step"] == step
        assert state["loss_history"][-1][0] == step  # log_every=1
        assert isinstance(kw["model"], torch.nn.Module) and kw["model"].training
        calls.append({k: kw[k] for k in ("step", "rank", "world_size")})

    run_worker(job, local_context(), on_checkpoint=on_checkpoint)
    assert calls == [{"step": s, "rank": 0, "world_size": 1} for s in (4, 8, 10)]


def test_incomplete_checkpoints_are_never_loaded(data_root, tmp_path) -> None:
    cfg = tiny_pretrain_config(data_root, tmp_path, optim=OptimConfig(lr=1e-3, max_steps=8))
    job = _job(cfg)
    run_worker(job, local_context())
    run_dir = Path(job.run_dir)
    # an interrupted save (staging dir) and a step directory without its manifest
    shutil.copytree(run_dir / "step_00000008", run_dir / ".tmp-step_00000012")
    shutil.copytree(run_dir / "step_00000008", run_dir / "step_00000016")
    (run_dir / "step_00000016" / MANIFEST_FILE).unlink()
    assert latest_checkpoint(run_dir) == run_dir / "step_00000008"
    model = build_train_model(job)
    opt = build_optimizer(model, cfg.optim)
    with pytest.raises(CheckpointError, match="saved by 1 workers, this run has 2"):
        load_training_state(
            run_dir / "step_00000008",
            model=model,
            optimizer=opt,
            rank=0,
            world_size=2,
            device=torch.device("cpu"),
        )
    # the next run deletes the staging leftover and resumes from step 8 (nothing to do)
    state = run_worker(job, local_context())
    assert state["step"] == 8 and not (run_dir / ".tmp-step_00000012").exists()


def test_save_checkpoint_writes_every_part_atomically(tmp_path) -> None:
    cfg = tiny_model_config()
    model = build_model(cfg)
    opt = build_optimizer(model, OptimConfig(max_steps=1))
    path = save_checkpoint(
        tmp_path / "run",
        3,
        model=model,
        model_config=cfg,
        optimizer=opt,
        trainer_state={"step": 3, "loss_history": [[3, 0.5]]},
        sampler_state={"epoch": 0, "batch_index": 3},
        state_stats=None,
        rank=0,
        world_size=1,
        keep_last=1,
        barrier=lambda: None,
    )
    files = set(p.name for p in path.iterdir())
    assert files == {
        "model.safetensors",
        "model_config.json",
        "optimizer.pt",
        "trainer.json",
        "rank0.json",
        "rng_rank0.safetensors",
        MANIFEST_FILE,
    }
    manifest = json.loads((path / MANIFEST_FILE).read_text())
    assert manifest["step"] == 3 and MANIFEST_FILE not in manifest["files"]
    assert not any(p.name.startswith(".tmp") for p in (tmp_path / "run").iterdir())


# --------------------------------------------------------------------------- model directories


def test_export_and_load_give_the_same_outputs(tmp_path) -> None:
    cfg = tiny_model_config(dropout=0.0)
    torch.manual_seed(1)
    model = build_model(cfg).eval()
    export_model(tmp_path / "m", model=model, model_config=cfg, state_stats=None, meta={"a": 1})
    loaded = load_checkpoint_model(tmp_path / "m")
    b = random_batch(cfg)
    args = (b.observations, b.returns_to_go, b.actions, b.rewards, b.timesteps)
    assert torch.equal(model(*args).action, loaded.model(*args).action)
    assert loaded.state_stats is None and loaded.meta == {"a": 1}
    model_, config_, stats_ = loaded[:3]  # unpacks as (model, config, state_stats)
    assert config_ == cfg and stats_ is None and model_ is loaded.model


def test_another_architecture_is_a_one_line_error(tmp_path) -> None:
    cfg = tiny_model_config()
    export_model(
        tmp_path / "m", model=build_model(cfg), model_config=cfg, state_stats=None, meta={}
    )
    other = tiny_model_config(d_model=24)
    (tmp_path / "m" / "model_config.json").write_text(other.model_dump_json())
    with pytest.raises(CheckpointError, match="another architecture") as err:
        load_model_dir(tmp_path / "m")
    assert "\n" not in str(err.value)
    with pytest.raises(CheckpointError, match="no such checkpoint"):
        load_checkpoint_model(tmp_path / "nowhere")
    (tmp_path / "empty").mkdir()
    with pytest.raises(CheckpointError, match="not a model or run directory"):
        load_checkpoint_model(tmp_path / "empty")
    (tmp_path / "m" / "model.safetensors").write_bytes(b"not safetensors")
    (tmp_path / "m" / "model_config.json").write_text(cfg.model_dump_json())
    with pytest.raises(CheckpointError, match="not a safetensors file"):
        load_model_dir(tmp_path / "m")


def test_one_progress_bar_line_per_tenth_of_the_run(tmp_path, capsys) -> None:
    """Off a terminal, the driver's bar prints a line per tenth of the run, read from the
    progress file rank 0 writes, whatever the logging cadence (here every step)."""
    import itertools
    import time

    from dtmem.training.monitor import write_progress
    from dtmem.training.report import ProgressBar

    with ProgressBar(tmp_path, total=100, poll_s=0.002):
        for step in range(1, 101):
            write_progress(tmp_path, step=step, total=100, loss=1.0 / step, steps_per_s=50.0)
            time.sleep(0.01)
    lines = capsys.readouterr().out.strip().splitlines()
    assert 5 <= len(lines) <= 11, lines
    assert lines[-1].startswith("step 100/100  loss 0.0100  50.00 steps/s")
    steps = [int(ln.split()[1].split("/")[0]) for ln in lines]
    assert steps == sorted(steps) and all(b - a >= 10 for a, b in itertools.pairwise(steps))
