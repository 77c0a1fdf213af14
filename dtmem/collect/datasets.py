"""What ``dtmem collect`` writes, per task: what identifies its data (``fingerprint``; a
dataset made by the same config is reused, ``existing_summary``), the episodes written in
index order by the task's own ``DatasetWriter`` as they come in (``TaskState``, ``drain``),
the commit with its summary, and the summary table and MLflow logging (``report``). No Ray.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from rich import box
from rich.console import Console
from rich.table import Table

from dtmem import metrics
from dtmem.collect.actors import EpisodeResult, dataset_spaces
from dtmem.config.collect import CollectConfig
from dtmem.data.env_specs import recording_env_spec
from dtmem.data.episodes import DataError, DatasetExistsError
from dtmem.data.minari_io import DatasetInfo, DatasetWriter, open_dataset
from dtmem.envs import env_id
from dtmem.tracking import RunHandle

__all__ = [
    "FORMAT",
    "CollectError",
    "DatasetSummary",
    "TaskState",
    "commit",
    "drain",
    "existing_summary",
    "fingerprint",
    "report",
]

FORMAT = 1  # bump when the recorded format changes, so old datasets are not reused


class CollectError(ValueError):
    """A collection that cannot run or finish as configured (one-line message)."""


# --- what identifies a task's data -----------------------------------------------------------


def fingerprint(cfg: CollectConfig, task: str) -> str:
    """sha256 of everything that decides a task's episodes (not actors or chunking)."""
    policy = cfg.policy.model_dump(mode="json")
    if cfg.policy.rllib is not None:  # the checkpoints act, not the recipe that made them
        policy["rllib"] = {
            "checkpoint_dir": str(Path(cfg.policy.rllib.checkpoint_dir).expanduser().resolve()),
            "checkpoint_iterations": list(cfg.policy.rllib.checkpoint_iterations),
        }
    decisive: dict[str, Any] = {
        "format": FORMAT,
        "suite": cfg.suite,
        "task": task,
        "episodes_per_task": cfg.episodes_per_task,
        "attempts": cfg.attempts_per_task,
        "max_steps": cfg.max_steps,
        "keep": cfg.keep,
        "policy": policy,
        "seed": cfg.seed,
    }
    if cfg.policy.rllib is not None:
        # batched inference decides which episodes share a forward pass: see the note on
        # reproducibility in CheckpointPolicy
        decisive["batching"] = [cfg.envs_per_actor, cfg.episodes_per_chunk]
    text = json.dumps(decisive, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()


@dataclass
class DatasetSummary:
    """One dataset of the collection, as printed and logged."""

    dataset_id: str
    task: str
    status: str  # "written" or "reused"
    episodes: int
    attempted: int
    steps: int
    return_mean: float
    return_min: float
    return_max: float
    success_rate: float | None  # of the attempted episodes; None without a success signal
    content_hash: str

    def row(self) -> dict[str, Any]:
        return asdict(self)


def existing_summary(cfg: CollectConfig, task: str, root: Path) -> DatasetSummary | None:
    """The summary of the task's dataset if it exists and was made by this config; None if
    it must be collected. Raises if it exists from another config and overwrite is off."""
    dataset_id = cfg.dataset.dataset_id(task)
    if not (root / dataset_id).exists():
        return None
    try:
        reader = open_dataset(dataset_id, root)
        made = (reader.metadata.get("dtmem") or {}).get("collect") or {}
    except DataError:
        made = {}
    if made.get("fingerprint") == fingerprint(cfg, task) and "summary" in made:
        digest = reader.stored_content_hash or ""
        return DatasetSummary(**made["summary"], status="reused", content_hash=digest)
    if cfg.overwrite:
        return None
    raise DatasetExistsError(
        f"{root / dataset_id}: dataset {dataset_id!r} exists from another collection config "
        "(set overwrite: true to replace it, or change dataset.version)"
    )


# --- per-task writing ----------------------------------------------------------------------


@dataclass
class TaskState:
    """One task's progress: what is dispatched, what came back, what is written."""

    task: str
    dataset_id: str
    wanted: int  # episodes to keep
    attempts: int  # most episodes to try
    variants: int
    next_dispatch: int = 0  # next episode index to hand out
    next_write: int = 0  # next episode index to write (or drop)
    outstanding: int = 0  # dispatched, not yet written or dropped
    buffer: dict[int, EpisodeResult] = field(default_factory=dict)
    writer: DatasetWriter | None = None
    kept: int = 0
    returns: list[float] = field(default_factory=list)
    steps: int = 0
    successes: int = 0
    with_success: bool = False
    done: bool = False

    def can_dispatch(self, all_or_successful: str) -> bool:
        if self.done or self.next_dispatch >= self.attempts:
            return False
        if all_or_successful == "all":
            return True
        return self.kept + self.outstanding < self.wanted  # optimistic: all will succeed

    def finished(self) -> bool:
        return self.kept >= self.wanted or self.next_write >= self.attempts


def open_writer(st: TaskState, cfg: CollectConfig, root: Path) -> DatasetWriter:
    observation_space, action_space = dataset_spaces(cfg.suite)
    return DatasetWriter(
        st.dataset_id,
        observation_space=observation_space,
        action_space=action_space,
        env_id=env_id(cfg.suite, st.task),
        task=st.task,
        root=root,
        env_spec=recording_env_spec(env_id(cfg.suite, st.task)),  # for recover_environment()
        author="dtmem collect",
        overwrite=cfg.overwrite,
        description=(
            f"{cfg.suite} {st.task}: {cfg.policy.kind} policy, keep {cfg.keep}, "
            f"collected by dtmem collect"
        ),
        algorithm_name=f"dtmem-collect/{cfg.policy.kind}",
    )


def drain(st: TaskState, cfg: CollectConfig, root: Path) -> None:
    """Write (or drop) the buffered episodes that continue the index sequence."""
    while not st.finished() and st.next_write in st.buffer:
        r = st.buffer.pop(st.next_write)
        st.next_write += 1
        st.outstanding -= 1
        st.with_success = r.success is not None
        st.successes += bool(r.success)
        if cfg.keep == "successful" and not r.success:
            continue
        if st.writer is None:
            st.writer = open_writer(st, cfg, root)
        st.writer.add_episode(r.episode)
        st.returns.append(r.episode_return)
        st.steps += r.episode.num_steps
        st.kept += 1


def commit(st: TaskState, cfg: CollectConfig) -> DatasetSummary:
    """Commit the task's dataset; its summary also goes into the dataset's metadata."""
    st.buffer.clear()
    if st.writer is None or st.kept == 0:
        raise CollectError(
            f"{st.task}: no episode kept out of {st.next_write} attempted (keep={cfg.keep})"
        )
    returns = np.asarray(st.returns)
    summary = DatasetSummary(
        dataset_id=st.dataset_id,
        task=st.task,
        status="written",
        episodes=st.kept,
        attempted=st.next_write,
        steps=st.steps,
        return_mean=float(returns.mean()),
        return_min=float(returns.min()),
        return_max=float(returns.max()),
        success_rate=st.successes / st.next_write if st.with_success else None,
        content_hash="",
    )
    st.writer.set_metadata(
        collect={
            "fingerprint": fingerprint(cfg, st.task),
            "config": cfg.model_dump(mode="json"),
            # without status and hash: a reused dataset's come from its own metadata
            "summary": {
                k: v for k, v in summary.row().items() if k not in ("status", "content_hash")
            },
        }
    )
    info = st.writer.commit()
    st.done = True
    summary.content_hash = info.content_hash or ""
    return summary


def report(summaries: list[DatasetSummary], run: RunHandle, console: Console, root: Path) -> None:
    """Print the summary table; log it (CSV), per-task metrics and the hashes to MLflow."""
    namespace = summaries[0].dataset_id.rsplit("/", 1)[0] if summaries else ""
    table = Table(title=f"datasets in {namespace}/ under {root}", box=box.SIMPLE_HEAD)
    for col in ("dataset", "status", "episodes", "steps", "return mean", "min", "max",
                "success", "hash"):  # fmt: skip
        table.add_column(col, justify="left" if col in ("dataset", "status") else "right")
    tags: dict[str, str] = {}
    rows = []
    for s in summaries:
        episodes = str(s.episodes) if s.attempted == s.episodes else f"{s.episodes}/{s.attempted}"
        table.add_row(
            s.dataset_id.rsplit("/", 1)[-1],
            s.status,
            episodes,
            f"{s.steps:,}",
            f"{s.return_mean:.1f}",
            f"{s.return_min:.1f}",
            f"{s.return_max:.1f}",
            "-" if s.success_rate is None else f"{s.success_rate:.2f}",
            s.content_hash[:8],
        )
        info = DatasetInfo(s.dataset_id, root / s.dataset_id, None, s.task, s.episodes, s.steps,
                           s.content_hash)  # fmt: skip
        tags.update(info.mlflow_tags())
        rows.append(s.row())
        values: dict[str, float] = {
            metrics.collect_metric(s.task, "episodes"): s.episodes,
            metrics.collect_metric(s.task, "steps"): s.steps,
            metrics.collect_metric(s.task, "return_mean"): s.return_mean,
        }
        if s.success_rate is not None:
            values[metrics.collect_metric(s.task, "success_rate")] = s.success_rate
        run.log_metrics(values, step=0)
    console.print(table)
    tags["collect.datasets"] = ",".join(s.dataset_id for s in summaries)
    run.set_tags(tags)
    run.log_table(rows, "collect_summary.csv")
