"""Which nodes are done: a node is skipped only when a FINISHED MLflow run carries its key
(tag ``dtmem.node_key``), its outputs were recorded (tag ``dtmem.outputs``, set last) and
every output still verifies on disk.

Outputs and their digests:
- a checkpoint (a fine-tune's or pretraining's exported model directory, and a LoRA
  adapter): sha256 over every file's relative path and bytes, so a deleted or altered
  weight file fails;
- a Minari dataset: sha256 over its files' relative paths and sizes plus the bytes of its
  ``data/metadata.json``, which holds the content hash of the episodes the writer computed.
  Re-hashing every episode of a paper-size dataset (tens of GB) on each rerun would cost
  minutes; a re-collected, truncated or replaced dataset changes the metadata or a size.

A FINISHED run whose outputs do not verify is retired: its ``dtmem.node_key`` tag moves to
``dtmem.stale_node_key`` (with the reason), so at most one finished run carries each key.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from dtmem.experiment import (
    TAG_NODE_KEY,
    TAG_OUTPUT_PREFIX,
    TAG_OUTPUTS,
    TAG_STAGE,
)

if TYPE_CHECKING:
    from mlflow.entities import Run
    from mlflow.tracking import MlflowClient

__all__ = [
    "Lookup",
    "Output",
    "checkpoint_digest",
    "dataset_digest",
    "lookup",
    "outputs_of",
    "record_outputs",
    "runs_with_key",
    "verify",
]

STALE_KEY_TAG = "dtmem.stale_node_key"
STALE_REASON_TAG = "dtmem.stale_reason"


@dataclass(frozen=True)
class Output:
    """One file tree a node produced: its kind, where it is and its digest."""

    kind: str  # "checkpoint" | "adapter" | "dataset"
    path: str
    digest: str
    id: str = ""  # the dataset id

    def check(self) -> str | None:
        """None if the output is there and unchanged, else why not."""
        p = Path(self.path)
        if not p.is_dir():
            return f"{self.kind} {self.path} is missing"
        now = dataset_digest(p) if self.kind == "dataset" else checkpoint_digest(p)
        if now != self.digest:
            return f"{self.kind} {self.path} changed since the run recorded it"
        return None


def _files(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*") if p.is_file())


def checkpoint_digest(root: Path) -> str:
    """sha256 over each file's relative path and bytes."""
    sha = hashlib.sha256(b"dtmem-checkpoint-v1\0")
    for file in _files(root):
        sha.update(f"{file.relative_to(root).as_posix()}\0".encode())
        with file.open("rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                sha.update(block)
        sha.update(b"\0")
    return sha.hexdigest()


def dataset_digest(root: Path) -> str:
    """sha256 over each file's relative path and size, and the dataset metadata's bytes."""
    sha = hashlib.sha256(b"dtmem-dataset-v1\0")
    for file in _files(root):
        sha.update(f"{file.relative_to(root).as_posix()}\0{file.stat().st_size}\0".encode())
    meta = root / "data" / "metadata.json"
    if meta.is_file():
        sha.update(meta.read_bytes())
    return sha.hexdigest()


def record_outputs(client: MlflowClient, run_id: str, outputs: Iterable[Output]) -> None:
    """Tag the run with its outputs; ``dtmem.outputs`` (the count) goes last, so a run
    killed halfway never looks complete."""
    from mlflow.entities import RunTag

    items = list(outputs)
    tags = [RunTag(f"{TAG_OUTPUT_PREFIX}{i}", json.dumps(asdict(o))) for i, o in enumerate(items)]
    for i in range(0, len(tags), 100):
        client.log_batch(run_id, tags=tags[i : i + 100])
    client.set_tag(run_id, TAG_OUTPUTS, str(len(items)))


def outputs_of(run: Run) -> list[Output] | None:
    """The recorded outputs of a run; None if they were never (completely) recorded."""
    tags = run.data.tags
    if TAG_OUTPUTS not in tags:
        return None
    out = []
    for i in range(int(tags[TAG_OUTPUTS])):
        raw = tags.get(f"{TAG_OUTPUT_PREFIX}{i}")
        if raw is None:
            return None
        out.append(Output(**json.loads(raw)))
    return out


def verify(run: Run) -> str | None:
    """None if the run is finished and its outputs verify, else the first reason why not."""
    if run.info.status != "FINISHED":
        return f"run {run.info.run_id} is {run.info.status}"
    outputs = outputs_of(run)
    if outputs is None:
        return f"run {run.info.run_id} finished without its outputs recorded"
    for output in outputs:
        why = output.check()
        if why is not None:
            return why
    return None


def runs_with_key(client: MlflowClient, experiment_id: str, key: str, stage: str) -> list[Run]:
    """Runs of ``stage`` tagged with ``key``, newest first (a sweep's trials carry other
    stage tags, so they are never mistaken for the sweep's own run)."""
    runs = client.search_runs(
        [experiment_id],
        filter_string=f"tags.`{TAG_NODE_KEY}` = '{key}' and tags.`{TAG_STAGE}` = '{stage}'",
        order_by=["attributes.start_time DESC"],
        max_results=50,
    )
    return list(runs)


@dataclass(frozen=True)
class Lookup:
    """The cache's answer for one node."""

    hit: Any | None  # the FINISHED, verified mlflow Run, or None
    replaces: str | None  # the newest earlier run of this key, when the node must run
    reason: str  # why it must run ("" on a hit)
    stale: bool = False  # a finished run's recorded outputs no longer verify

    @property
    def outputs(self) -> list[Output]:
        return (outputs_of(self.hit) or []) if self.hit is not None else []


def lookup(
    client: MlflowClient, experiment_id: str | None, key: str, stage: str, retire: bool = True
) -> Lookup:
    """A verified finished run of ``key``; with ``retire``, finished runs that fail
    verification lose their key tag so that the rerun's run is the only finished one."""
    if experiment_id is None:
        return Lookup(None, None, "no run yet")
    runs = runs_with_key(client, experiment_id, key, stage)
    reason, stale = "no run yet", False
    for run in runs:
        if run.info.status != "FINISHED":
            continue
        why = verify(run)
        if why is None:
            return Lookup(run, None, "")
        reason = why
        stale = stale or outputs_of(run) is not None
        if retire:
            client.set_tag(run.info.run_id, STALE_KEY_TAG, key)
            client.set_tag(run.info.run_id, STALE_REASON_TAG, why[:500])
            client.delete_tag(run.info.run_id, TAG_NODE_KEY)
    if runs and reason == "no run yet":
        reason = f"last run {runs[0].info.run_id} is {runs[0].info.status}"
    return Lookup(None, runs[0].info.run_id if runs else None, reason, stale)
