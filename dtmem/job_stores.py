"""Where a job's results go, resolved on the submitter's side before ``dtmem submit`` sends it.

Submitted to a Ray cluster with nothing forwarded, a stage would log to an ``mlflow.db`` and
write its checkpoints inside Ray's temporary copy of the working directory, and would not
find its datasets. ``resolve_stores`` reads the stage's config as the user's settings say
(the config, else the environment, else the defaults; relative paths from the user's working
directory) and returns what to forward: $MLFLOW_TRACKING_URI, $MINARI_DATASETS_PATH, and
``--set`` overrides that make a config's relative paths absolute. A store the cluster cannot
reach is refused (``StoreError``, one line saying what to use instead):

    cluster on this machine (127.0.0.1, localhost)   absolute local paths are forwarded
    cluster elsewhere                                a tracking server, object storage, or a
                                                     shared mount (nfs, ceph, fuse, ...)
"""

from __future__ import annotations

import os
import urllib.parse
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = ["JobStores", "StoreError", "is_local_address", "read_mounts", "resolve_stores"]


class StoreError(ValueError):
    """A store the cluster cannot reach; the message is one line saying what to use instead."""


# What a stage writes outside MLflow, and where it reads datasets (dotted config fields).
_STAGES: dict[str, tuple[str, tuple[str, ...], str | None]] = {
    "collect": ("dtmem.config.collect:CollectConfig", ("policy.rllib.checkpoint_dir",), "root"),
    "pretrain": ("dtmem.config.train:PretrainConfig", ("checkpoint.dir",), "data.root"),
    "finetune": ("dtmem.config.train:FinetuneConfig", ("checkpoint.dir",), "data.root"),
    "evaluate": ("dtmem.config.evaluate:EvaluateConfig", (), None),
    "sweep": ("dtmem.config.sweep:SweepConfig", ("storage_dir",), None),
}
_LOOPBACK = ("localhost", "::1")
# File systems every node can mount at the same path (shared storage).
_SHARED_FS = ("nfs", "nfs4", "cifs", "smb3", "smbfs", "ceph", "glusterfs", "lustre", "beegfs",
              "gpfs", "9p", "virtiofs", "fuse.")  # fmt: skip
_SHARED_HINT = "shared storage mounted at the same path on every node"


@dataclass(frozen=True)
class JobStores:
    """Where a submitted stage's results go, resolved on the submitter's side.

    ``env``: forwarded in the job's environment ($MLFLOW_TRACKING_URI, $MINARI_DATASETS_PATH);
    ``overrides``: ``--set`` arguments added to the command (a config's relative path made
    absolute); ``summary``: one line for the user (credentials redacted)."""

    env: dict[str, str]
    overrides: tuple[str, ...]
    summary: str


def is_local_address(address: str) -> bool:
    """Whether the Ray cluster at ``address`` runs on this machine (loopback host)."""
    host = urllib.parse.urlsplit(address if "://" in address else f"http://{address}").hostname
    return host is not None and (host in _LOOPBACK or host.startswith("127."))


def _on_shared_fs(path: Path, mounts: str | None) -> bool:
    """Whether ``path`` (or its nearest existing parent) lies on a network/shared mount."""
    if mounts is None:
        return False
    best, fstype = "", ""
    target = str(path)
    for line in mounts.splitlines():
        fields = line.split()
        if len(fields) < 3:
            continue
        point = fields[1].replace("\\040", " ")
        inside = target == point or target.startswith(point.rstrip("/") + "/")
        if inside and len(point) > len(best):
            best, fstype = point, fields[2]
    return fstype.startswith(_SHARED_FS)


def read_mounts() -> str | None:
    try:
        return Path("/proc/mounts").read_text()
    except OSError:
        return None


def _stage_command(command: Sequence[str]) -> tuple[str, str, list[str]] | None:
    """``dtmem STAGE CONFIG [--set k=v ...]`` -> (stage, config, overrides); else None."""
    if len(command) < 3 or Path(command[0]).name != "dtmem" or command[1] not in _STAGES:
        return None
    if command[2].startswith("-"):
        return None
    overrides: list[str] = []
    args = list(command[3:])
    for i, arg in enumerate(args):
        if arg in ("--set", "-s") and i + 1 < len(args):
            overrides.append(args[i + 1])
        elif arg.startswith("--set="):
            overrides.append(arg[len("--set=") :])
    return command[1], command[2], overrides


def _field(cfg: Any, dotted: str) -> Any:
    node = cfg
    for part in dotted.split("."):
        node = getattr(node, part, None)
        if node is None:
            return None
    return node


def _place(
    what: str, value: str, *, cwd: Path, local: bool, address: str, mounts: str | None
) -> str:
    """``value`` (a directory the job writes or reads) as the job must see it: absolute, and
    reachable from the cluster's nodes; refused (StoreError) when a remote cluster cannot
    reach it."""
    if "://" in value:  # object storage (s3://, gs://, ...): the same from every node
        return value
    path = Path(value).expanduser()
    if not path.is_absolute():
        if not local:
            raise StoreError(
                f"{what}: {value!r} is relative: on the cluster at {address} it would land in "
                f"Ray's temporary copy of the working directory; use {_SHARED_HINT}"
            )
        path = cwd / path
    path = Path(os.path.normpath(path))
    if not local and path.exists() and not _on_shared_fs(path, mounts):
        raise StoreError(
            f"{what}: {path} is a directory on this machine, which the cluster at {address} "
            f"cannot reach; use {_SHARED_HINT}"
        )
    return str(path)


def _local_store(uri: str) -> bool:
    """A tracking store only this machine can reach: a sqlite file, or a loopback server."""
    if uri.startswith("sqlite:"):
        return True
    return uri.startswith(("http://", "https://")) and is_local_address(uri)


def resolve_stores(
    command: Sequence[str],
    *,
    address: str,
    cwd: Path,
    working_dir: Path,
    environ: Mapping[str, str],
    mounts: str | None = None,
) -> JobStores:
    """Resolve the tracking URI, the dataset root and the checkpoint storage of a ``dtmem``
    stage command on the submitter's side, as the user's settings say (config, else
    environment, else the defaults, relative paths from ``cwd``), and check a cluster can
    reach them: on this machine (a loopback address) absolute local paths are forwarded; a
    remote cluster gets them only when they are servers, object storage or shared mounts.

    The config is read and validated here, so a bad one is refused before the job starts.
    Any other command gets only $MLFLOW_TRACKING_URI and $MINARI_DATASETS_PATH, made absolute.
    """
    from dtmem.tracking import DEFAULT_TRACKING_URI, check_tracking, redact_uri

    local = is_local_address(address)
    parsed = _stage_command(command)
    cfg: Any = None
    storage_fields: tuple[str, ...] = ()
    root_field = None
    if parsed is not None:
        import importlib

        from dtmem.config.base import load_config

        stage, config, sets = parsed
        cls_path, storage_fields, root_field = _STAGES[stage]
        module, _, name = cls_path.partition(":")
        config_path = Path(config) if Path(config).is_absolute() else working_dir / config
        cfg = load_config(getattr(importlib.import_module(module), name), config_path, sets)

    env: dict[str, str] = {}
    overrides: list[str] = []

    # the tracking store: tracking.uri, else $MLFLOW_TRACKING_URI, else ./mlflow.db
    cfg_uri = _field(cfg, "tracking.uri")
    uri = cfg_uri or environ.get("MLFLOW_TRACKING_URI") or None
    if parsed is not None or uri:
        uri = uri or DEFAULT_TRACKING_URI
        if uri.startswith("sqlite:///") and not uri.startswith("sqlite:////"):
            uri = "sqlite:///" + os.path.normpath(cwd / uri[len("sqlite:///") :])
        if parsed is not None and _local_store(uri) and not local:
            raise StoreError(
                f"tracking store {redact_uri(uri)} is on this machine; the cluster at {address} "
                "cannot reach it: set MLFLOW_TRACKING_URI (or tracking.uri) to a tracking "
                "server every node reaches, e.g. http://mlflow.internal:5000"
            )
        if parsed is not None and (local or uri.startswith("sqlite:")):
            try:
                check_tracking(uri)
            except ValueError as exc:
                raise StoreError(str(exc)) from None
        env["MLFLOW_TRACKING_URI"] = uri
        if cfg_uri and cfg_uri != uri:
            overrides.append(f"tracking.uri={uri}")

    # the dataset root: the config's, else $MINARI_DATASETS_PATH, else ~/.minari/datasets
    # a command that is not a stage is only given absolute paths, never refused
    place = lambda what, value: _place(  # noqa: E731
        what, value, cwd=cwd, local=local or parsed is None, address=address, mounts=mounts
    )
    cfg_root = _field(cfg, root_field) if root_field else None
    root = cfg_root or environ.get("MINARI_DATASETS_PATH") or None
    if root is not None:
        what = root_field if cfg_root else "MINARI_DATASETS_PATH"
        root = place(what, root)
        if cfg_root and cfg_root != root:
            overrides.append(f"{root_field}={root}")
    elif parsed is not None and local:
        root = str(Path.home() / ".minari" / "datasets")
    if root is not None:
        env["MINARI_DATASETS_PATH"] = root

    # checkpoints and other run directories
    storage = []
    for dotted in storage_fields:
        value = _field(cfg, dotted)
        if value is None:
            continue
        placed = place(dotted, str(value))
        storage.append(placed)
        if placed != value:
            overrides.append(f"{dotted}={placed}")

    parts = []
    if "MLFLOW_TRACKING_URI" in env:
        parts.append(f"MLflow {redact_uri(env['MLFLOW_TRACKING_URI'])}")
    if root is not None:
        parts.append(f"datasets {root}")
    parts.extend(f"checkpoints {s}" for s in storage)
    summary = "results: " + "; ".join(parts) if parts else ""
    return JobStores(env=env, overrides=tuple(overrides), summary=summary)
