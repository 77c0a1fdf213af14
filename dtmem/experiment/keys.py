"""Node identity: a node's key is the sha256 of its stage, its fully resolved config minus the
fields that only name or track a run, the keys of its upstream nodes, and the code version.

Left out of the key (they say where a run is logged or what it is called, not what it
computes): ``tracking`` (MLflow URI, experiment, parent, tags), ``run_name`` and ``name``
(derived from the key itself), ``registry`` (the runner does not register models),
``progress`` (display), the dataset ``root`` (set per machine; the data's identity is the
upstream dataset node's key). Wiring fields that the runner fills at run time (the
upstream checkpoint of a fine-tune or evaluation) hold a stable placeholder at plan time.

The code version hashes the Python sources of the ``dtmem``, ``pipelines`` and ``tuning``
packages, so an edited helper invalidates every node it could feed. Left out: the modules
that only read finished runs (``READ_ONLY_SOURCES``: the report, ``status``, the plan's time
estimate), which no node's outputs depend on, so that mending a report's table does not
rerun a study.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Mapping
from fnmatch import fnmatch
from pathlib import Path
from typing import Any

from pydantic import BaseModel

__all__ = ["CODE_PACKAGES", "READ_ONLY_SOURCES", "code_version", "key_payload", "node_key"]

CODE_PACKAGES = ("dtmem", "pipelines", "tuning")
# under the packages, as package/relative/path.py (fnmatch patterns)
READ_ONLY_SOURCES = (
    "dtmem/experiment/report*.py",
    "dtmem/experiment/status.py",
    "dtmem/experiment/estimate.py",
)
_DROP_EVERYWHERE = frozenset({"tracking", "run_name", "registry", "progress"})
_DROP_BY_STAGE = {"sweep": frozenset({"name"})}


def _repo_root() -> Path:
    return Path(__file__).resolve().parents[2]


def code_version(roots: Iterable[Path] | None = None) -> str:
    """sha256 over the relative path and bytes of every ``*.py`` under ``roots`` (default:
    the three packages of this checkout) but ``READ_ONLY_SOURCES``, in path order; 16 hex
    digits."""
    if roots is None:
        roots = tuple(_repo_root() / p for p in CODE_PACKAGES)
    sha = hashlib.sha256(b"dtmem-code-v1\0")
    for root in (Path(r).resolve() for r in roots):
        for file in sorted(root.rglob("*.py")):
            name = f"{root.name}/{file.relative_to(root).as_posix()}"
            if "__pycache__" in file.parts or any(fnmatch(name, p) for p in READ_ONLY_SOURCES):
                continue
            sha.update(f"{name}\0".encode())
            sha.update(file.read_bytes())
            sha.update(b"\0")
    return sha.hexdigest()[:16]


def _strip(data: Any, drop: frozenset[str]) -> Any:
    if isinstance(data, dict):
        out = {}
        for k, v in data.items():
            if k in drop:
                continue
            if k == "root" and (v is None or isinstance(v, str)):
                continue  # the dataset root (collect, data): where, not what
            out[k] = _strip(v, drop)
        return out
    if isinstance(data, list):
        return [_strip(v, drop) for v in data]
    return data


def key_payload(stage: str, config: BaseModel, extra: Mapping[str, Any] | None = None) -> Any:
    """The part of a node's config its key hashes (plus ``extra``: e.g. a sweep's base)."""
    drop = _DROP_EVERYWHERE | _DROP_BY_STAGE.get(stage, frozenset())
    payload = _strip(config.model_dump(mode="json"), drop)
    if extra:
        payload = {"config": payload, "extra": _strip(dict(extra), drop)}
    return payload


def node_key(
    stage: str,
    config: BaseModel,
    upstream_keys: Iterable[str],
    code: str,
    extra: Mapping[str, Any] | None = None,
) -> str:
    """The node's key: 32 hex digits of sha256 over stage, payload, upstream keys, code."""
    blob = json.dumps(
        {
            "stage": stage,
            "config": key_payload(stage, config, extra),
            "upstream": sorted(upstream_keys),
            "code": code,
        },
        sort_keys=True,
        separators=(",", ":"),
    )
    return hashlib.sha256(blob.encode()).hexdigest()[:32]
