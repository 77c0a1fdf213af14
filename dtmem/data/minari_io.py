"""Minari datasets on disk, in one import: where they live, the writer, the reader, the checks.

The parts live in modules that each hold one idea; this module gathers their public names
(callers import from here):

    store     the datasets root, dataset ids, the content hash, ``DatasetInfo``
    writer    ``DatasetWriter`` / ``write_dataset``: atomic, a failed write leaves nothing
    reader    ``DatasetReader`` / ``open_dataset``: metadata when opened, episodes on demand
    checks    env, observation shape and content checks against a config or model
"""

from __future__ import annotations

from dtmem.data.checks import check_env, check_observation_shape, validate_dataset, window_obs_shape
from dtmem.data.reader import DatasetReader, open_dataset
from dtmem.data.store import (
    DTMEM_METADATA_KEY,
    ContentHasher,
    DatasetInfo,
    check_dataset_root,
    content_hash,
    dataset_dir,
    resolve_root,
    validate_dataset_id,
)
from dtmem.data.writer import DatasetWriter, write_dataset

__all__ = [
    "DTMEM_METADATA_KEY",
    "ContentHasher",
    "DatasetInfo",
    "DatasetReader",
    "DatasetWriter",
    "check_dataset_root",
    "check_env",
    "check_observation_shape",
    "content_hash",
    "dataset_dir",
    "open_dataset",
    "resolve_root",
    "validate_dataset",
    "validate_dataset_id",
    "window_obs_shape",
    "write_dataset",
]
