"""What the memory does: a DT-Mem's write and read addressing over one demonstration window
of a held-out task, before and after fine-tuning, logged as heatmaps (slots x steps).

The experiment adds a ``probe/<arm>/s<seed>/<task>/<mode>`` node after each fine-tune of an
arm whose model has a memory; it reads the pretrained and the fine-tuned checkpoints and the
fine-tune's own data section (the first window of its first batch: the same demonstrations
the fine-tune trained on). One PNG per node, ``memory/<task>-<mode>.png``: a row per memory
block, columns write before / after, read before / after; each panel's rows are the memory
slots, its columns the window's steps (write: the K steps; read: the 3K tokens).
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import Field

from dtmem.config.base import FrozenConfig
from dtmem.config.data import DataConfig
from dtmem.config.tracking import TrackingConfig

__all__ = ["STAGE", "MemoryProbeConfig", "ProbeResult", "run_memory_probe"]

STAGE = "probe"  # dtmem.stage of a probe node's run
ARTIFACT_DIR = "memory"


class MemoryProbeConfig(FrozenConfig):
    """One probe: two checkpoints of the same DT-Mem and the data of a window."""

    pretrained: str = Field(..., description="the model before fine-tuning (a checkpoint dir)")
    finetuned: str = Field(..., description="the model after fine-tuning (a checkpoint dir)")
    task: str = Field(..., description="the held-out task (names the plot)")
    mode: str = Field(..., description="the fine-tune mode (names the plot)")
    data: DataConfig = Field(..., description="the fine-tune's data section: the window's source")
    tracking: TrackingConfig = Field(..., description="MLflow run of the probe")


@dataclass(frozen=True)
class ProbeResult:
    run_id: str
    plot: Path  # a local copy of the logged PNG (in a temporary directory, gone after the run)


def _window(cfg: MemoryProbeConfig, stats: Any) -> Any:
    """The first window of the first batch of the fine-tune's data (model's state stats)."""
    from dataclasses import fields

    from dtmem.batch import Batch
    from dtmem.data.sampler import build_sampler

    sampler = build_sampler(cfg.data, rank=0, world_size=1, state_stats=stats)
    batch = next(iter(sampler.iter_epoch()))
    return Batch(**{f.name: getattr(batch, f.name)[:1] for f in fields(batch)})


def _plot(before: list[Any], after: list[Any], title: str, out: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    columns = [("write", "before", before), ("write", "after", after)]
    columns += [("read", "before", before), ("read", "after", after)]
    rows = len(before)
    fig, axes = plt.subplots(rows, 4, figsize=(13, 2.8 * rows), squeeze=False)
    for b in range(rows):
        for c, (kind, when, probes) in enumerate(columns):
            weights = getattr(probes[b], kind)[0].cpu().numpy()  # (steps, N)
            ax = axes[b, c]
            im = ax.imshow(weights.T, aspect="auto", origin="lower", cmap="viridis")  # (N, steps)
            ax.set_title(f"block {b} {kind} {when}", fontsize=9)
            ax.set_xlabel("step" if kind == "write" else "token")
            ax.set_ylabel("slot")
            fig.colorbar(im, ax=ax, fraction=0.04)
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(out, dpi=80)
    plt.close(fig)
    return out


def run_memory_probe(cfg: MemoryProbeConfig) -> ProbeResult:
    """Probe both checkpoints on one window and log the heatmaps on a ``probe`` run."""
    from dtmem.model.probe import memory_addressing
    from dtmem.tracking import start_run
    from dtmem.training.checkpoint import load_checkpoint_model

    before_model = load_checkpoint_model(cfg.pretrained)
    after_model = load_checkpoint_model(cfg.finetuned)
    if not before_model.config.memory or not after_model.config.memory:
        raise ValueError(f"{cfg.pretrained}: a model without memory has nothing to probe")
    batch = _window(cfg, before_model.state_stats)
    before = memory_addressing(before_model.model, batch)
    after = memory_addressing(after_model.model, batch)
    with start_run(cfg.tracking, stage=STAGE, config=cfg) as run:
        tmp = Path(tempfile.mkdtemp(prefix="dtmem-probe-"))
        name = f"{cfg.task}-{cfg.mode}.png"
        title = f"{cfg.task}: memory addressing before / after {cfg.mode} fine-tuning"
        plot = _plot(before, after, title, tmp / name)
        run.log_artifact(plot, ARTIFACT_DIR)
        return ProbeResult(run.run_id, plot)
