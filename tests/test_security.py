"""Hostile input, from a threat model: a user runs dtmem on files and names that someone else
made (a downloaded agent checkpoint, a shared config, a model reference pasted from a chat).

- A checkpoint must never run code: RLlib's pickles are refused, the pickle-free export is
  read field by field, and a "safetensors" file that is really a pickle is not unpickled.
- A name must never become a path outside its store (``../../x``, ``/etc``, ``a/../../b``).
- A disk that fills mid-write leaves no file that looks complete, and says so in one line.

Every hostile pickle here would write a marker file if it ran; each test asserts it did not.
"""

from __future__ import annotations

import errno
import json
import os
import pickle
from pathlib import Path

import numpy as np
import pytest

from dtmem.collect.rllib_agent import (
    CheckpointError,
    build_module,
    checkpoint_path,
    export_checkpoint,
    load_module,
    module_logits,
    module_path,
    policy_path,
    train_agent,
)
from dtmem.config.base import ConfigError, load_config
from dtmem.config.collect import RLlibConfig
from dtmem.fileio import DiskError, check_writable, write_json_atomic, write_text_atomic

SMALL_CNN = {"conv_filters": [[8, 8, 4], [16, 4, 2], [16, 9, 1]]}  # 84 -> 20 -> 9 -> 1


class _RunsCode:
    """Unpickling this writes ``marker``: the proof that a load ran code."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self) -> tuple[object, tuple[str]]:
        return (exec, (f"open({self.marker!r}, 'w').write('ran')",))


def _hostile_rllib_checkpoint(checkpoint: Path, marker: Path) -> None:
    """A full RLlib algorithm checkpoint's layout whose every pickle runs code."""
    module_dir = module_path(checkpoint)
    module_dir.mkdir(parents=True)
    payload = pickle.dumps(_RunsCode(marker))
    for name in ("class_and_ctor_args.pkl", "module_state.pkl"):
        (module_dir / name).write_bytes(payload)
    (checkpoint / "algorithm_state.pkl").write_bytes(payload)
    (checkpoint / "rllib_checkpoint.json").write_text('{"type": "Algorithm"}')


# --------------------------------------------------------------------------- checkpoints


def test_a_pickled_rllib_checkpoint_is_refused_and_runs_nothing(tmp_path: Path) -> None:
    from dtmem.collect.rllib_agent import CheckpointPolicy
    from dtmem.envs import EnvSpec

    marker = tmp_path / "MARKER"
    cfg = RLlibConfig(checkpoint_dir=str(tmp_path / "agents"), checkpoint_iterations=(1,))
    checkpoint = checkpoint_path(cfg, "Pong", 1)
    _hostile_rllib_checkpoint(checkpoint, marker)

    with pytest.raises(CheckpointError) as err:
        load_module(checkpoint)
    message = str(err.value)
    assert "\n" not in message and f"dtmem convert-rllib {checkpoint}" in message
    assert "pickle" in message

    spec = EnvSpec(
        "Pong", (4, 84, 84), "discrete", num_actions=18, act_dim=0, max_episode_steps=None
    )
    with pytest.raises(CheckpointError, match="convert-rllib"):
        CheckpointPolicy([checkpoint], spec, 1, greedy=True)
    # training "the missing checkpoint" would overwrite the user's files (and resume from pickles)
    with pytest.raises(CheckpointError, match="convert-rllib"):
        train_agent(cfg, "Pong", seed=0)
    assert not marker.exists()
    assert (module_path(checkpoint) / "module_state.pkl").is_file()  # left as it was


def test_a_hostile_export_is_read_as_data_only(tmp_path: Path) -> None:
    marker = tmp_path / "MARKER"
    export = policy_path(tmp_path / "ck")
    export.mkdir(parents=True)
    # a "safetensors" file that is a pickle: safetensors refuses it, nothing is unpickled
    (export / "module.safetensors").write_bytes(pickle.dumps(_RunsCode(marker)))
    spec = {"format": 1, "algorithm": "PPO", "inference_only": True, "model_config": SMALL_CNN}
    (export / "module.json").write_text(json.dumps(spec))
    with pytest.raises(CheckpointError, match="does not fit the module") as err:
        load_module(tmp_path / "ck")
    assert "\n" not in str(err.value)
    # the spec names no code: an unknown algorithm or model field is refused
    for bad, expected in (
        ({**spec, "algorithm": "os.system"}, "expected PPO or DQN"),
        ({**spec, "model_config": {"custom_model": "evil.Module"}}, "unknown fields"),
        ({**spec, "format": 2}, "format 1"),
    ):
        (export / "module.json").write_text(json.dumps(bad))
        with pytest.raises(CheckpointError, match=expected):
            load_module(tmp_path / "ck")
    assert not marker.exists()


def test_export_round_trip_acts_as_the_trusted_checkpoint(tmp_path: Path) -> None:
    """A pickled checkpoint the user trusts (written by RLlib itself) is converted once;
    collection then loads the export and acts exactly as the original module."""
    trusted = build_module("PPO", SMALL_CNN, inference_only=False)
    checkpoint = tmp_path / "iter_000001"
    trusted.save_to_path(str(module_path(checkpoint)))  # RLlib's own (pickled) format
    with pytest.raises(CheckpointError, match="convert-rllib"):
        load_module(checkpoint)

    export = export_checkpoint(checkpoint)
    assert sorted(p.name for p in export.iterdir()) == ["module.json", "module.safetensors"]
    assert not list(checkpoint.glob(".tmp-*"))  # written under a temp name, then renamed
    loaded = load_module(checkpoint)
    obs = np.random.default_rng(0).integers(0, 256, (5, 4, 84, 84), dtype=np.uint8)
    np.testing.assert_allclose(module_logits(loaded, obs), module_logits(trusted, obs), atol=1e-6)


# --------------------------------------------------------------------------- names


HOSTILE_NAMES = ["../../x", "/etc/passwd", "a/../../b", "..", ".hidden", "x\\..\\y", "a\nb"]


@pytest.mark.parametrize("name", HOSTILE_NAMES)
@pytest.mark.parametrize(
    ("config", "field"),
    [
        ("pipelines/configs/smoke/pretrain.yaml", "run_name"),
        ("pipelines/configs/smoke/pretrain.yaml", "tracking.experiment"),
        ("pipelines/configs/smoke/pretrain.yaml", "tracking.run_name"),
        ("pipelines/configs/smoke/pretrain.yaml", "data.datasets.0.id"),
        ("pipelines/configs/smoke/collect.yaml", "dataset.name"),
        ("pipelines/configs/smoke/collect.yaml", "dataset.namespace"),
        ("tuning/smoke.yaml", "name"),
    ],
)
def test_names_that_become_paths_are_refused_in_the_config(
    name: str, config: str, field: str
) -> None:
    from dtmem.config.collect import CollectConfig
    from dtmem.config.sweep import SweepConfig
    from dtmem.config.train import PretrainConfig

    cls = {"pretrain": PretrainConfig, "collect": CollectConfig, "smoke": SweepConfig}
    root = Path(__file__).resolve().parents[1]
    kind = Path(config).stem
    with pytest.raises(ConfigError) as err:
        load_config(cls[kind], root / config, [f"{field}={json.dumps(name)}"])
    message = str(err.value)
    assert "\n" not in message and f"{field}:" in message and "not a safe" in message


def test_ordinary_names_pass() -> None:
    from dtmem.config.data import DatasetSpec
    from dtmem.config.tracking import TrackingConfig

    assert TrackingConfig(experiment="dt-mem sweep 2", run_name="slots=64,rank=8").run_name
    assert DatasetSpec(id="dtmem/metaworld/reach-v3-v0").id == "dtmem/metaworld/reach-v3-v0"


# --------------------------------------------------------------------------- disks


def test_a_full_disk_mid_write_leaves_nothing_and_says_so(tmp_path, monkeypatch) -> None:
    target = tmp_path / "stats.json"
    write_json_atomic(target, {"old": 1})

    def full(fd: int) -> None:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(os, "fsync", full)
    for write in (
        lambda: write_json_atomic(target, {"new": 2}),
        lambda: write_text_atomic(target, "x"),
    ):
        with pytest.raises(DiskError) as err:
            write()
        assert (
            str(err.value)
            == f"{target}: cannot write (the disk is full; free space or write elsewhere)"
        )
    assert json.loads(target.read_text()) == {"old": 1}  # the old file, whole
    assert sorted(p.name for p in tmp_path.iterdir()) == ["stats.json"]  # no temp file left


def test_check_writable_refuses_before_any_compute(tmp_path) -> None:
    assert check_writable(tmp_path / "new" / "dir", 1) == tmp_path / "new" / "dir"
    assert not list((tmp_path / "new" / "dir").iterdir())  # the probe is gone
    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.raises(DiskError) as err:
        check_writable(blocker / "sub", 1)
    assert str(err.value).startswith(f"{blocker / 'sub'}: cannot write")
    with pytest.raises(DiskError, match=r"MiB free, \d+ MiB needed"):
        check_writable(tmp_path, min_free_bytes=2**62)
    if os.path.isdir("/proc/self"):  # a read-only file system, even for root
        with pytest.raises(DiskError, match="cannot write"):
            check_writable("/proc/self/dtmem-probe", 1)
