"""Minari datasets: written here -> plain minari reads them; written by minari -> read here.

Also the atomic writer, the content hash, dataset root resolution, the DataConfig and the
one-line errors for bad input.
"""

from __future__ import annotations

import json
import re
import warnings
from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest

from dtmem.config.base import ConfigError, load_config
from dtmem.config.data import DataConfig
from dtmem.data.episodes import (
    DataError,
    DatasetExistsError,
    DatasetNotFoundError,
    EnvMismatchError,
    Episode,
    NonFiniteDataError,
    ObservationShapeError,
)
from dtmem.data.minari_io import (
    DatasetWriter,
    check_env,
    check_observation_shape,
    content_hash,
    open_dataset,
    resolve_root,
    validate_dataset,
    write_dataset,
)

OBS_DIM, ACT_DIM = 17, 5
VEC_OBS = gym.spaces.Box(-np.inf, np.inf, (OBS_DIM,), np.float32)
VEC_ACT = gym.spaces.Box(-1.0, 1.0, (ACT_DIM,), np.float32)


def vector_episode(rng: np.random.Generator, T: int) -> Episode:
    return Episode(
        observations=rng.standard_normal((T + 1, OBS_DIM)).astype(np.float32),
        actions=rng.uniform(-1, 1, (T, ACT_DIM)).astype(np.float32),
        rewards=rng.standard_normal(T).astype(np.float32),
        terminations=np.r_[np.zeros(T - 1, bool), True],
        truncations=np.zeros(T, bool),
        infos={"success": rng.integers(0, 2, T + 1)},  # scalar info: stored as (T+1, 1)
    )


@pytest.fixture
def root(tmp_path, monkeypatch):
    """A datasets root that plain ``minari.load_dataset`` also uses."""
    path = tmp_path / "datasets"
    monkeypatch.setenv("MINARI_DATASETS_PATH", str(path))
    return path


def write_vector(dataset_id: str, episodes: list[Episode], **kw) -> object:
    return write_dataset(
        dataset_id,
        episodes,
        observation_space=VEC_OBS,
        action_space=VEC_ACT,
        env_id="Meta-World/reach-v3",
        task="reach-v3",
        **kw,
    )


def write_with_minari(dataset_id: str, episodes: list[Episode], data_format: str) -> None:
    """A dataset made by Minari's own writer (create_dataset_from_buffers, env=None)."""
    import minari
    from minari.data_collector.episode_buffer import EpisodeBuffer

    buffers = [
        EpisodeBuffer(
            observations=ep.observations,
            actions=ep.actions,
            rewards=ep.rewards.astype(np.float64),
            terminations=ep.terminations,
            truncations=ep.truncations,
        )
        for ep in episodes
    ]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # minari warns about missing author etc.
        minari.create_dataset_from_buffers(
            dataset_id,
            buffers,
            env=None,
            observation_space=VEC_OBS,
            action_space=VEC_ACT,
            data_format=data_format,
        )


def test_written_dataset_opens_with_plain_minari(root):
    import minari

    rng = np.random.default_rng(0)
    episodes = [vector_episode(rng, T) for T in (7, 3, 11)]
    info = write_vector("dtmem/mw/reach-v0", episodes)
    assert info.path == root / "dtmem/mw/reach-v0"
    assert (info.total_episodes, info.total_steps) == (3, 21)

    dataset = minari.load_dataset("dtmem/mw/reach-v0")
    assert dataset.total_episodes == 3 and dataset.total_steps == 21
    for ep, back in zip(episodes, dataset.iterate_episodes(), strict=True):
        np.testing.assert_array_equal(back.observations, ep.observations)
        np.testing.assert_array_equal(back.actions, ep.actions)
        np.testing.assert_array_equal(back.rewards, ep.rewards)
        np.testing.assert_array_equal(back.terminations, ep.terminations)
        np.testing.assert_array_equal(back.infos["success"], ep.infos["success"].reshape(-1, 1))
    assert "dtmem/mw/reach-v0" in minari.list_local_datasets()
    meta = dataset.storage.metadata["dtmem"]
    assert meta["env_id"] == "Meta-World/reach-v3" and meta["task"] == "reach-v3"
    assert meta["content_hash"] == info.content_hash


def test_reader_matches_minari_and_hash_round_trips(root):
    import minari

    rng = np.random.default_rng(1)
    episodes = [vector_episode(rng, T) for T in (4, 9)]
    info = write_vector("mw/pick-v1", episodes)
    reader = open_dataset("mw/pick-v1")
    np.testing.assert_array_equal(reader.episode_lengths(), [4, 9])
    from_minari = list(minari.load_dataset("mw/pick-v1").iterate_episodes())
    for i, ref in enumerate(from_minari):
        ep = reader.read_episode(i)
        np.testing.assert_array_equal(ep.observations, ref.observations)
        np.testing.assert_array_equal(ep.actions, ref.actions)
        np.testing.assert_array_equal(ep.rewards, ref.rewards)
        np.testing.assert_array_equal(ep.infos["success"], ref.infos["success"])
    assert len(info.content_hash) == 64
    assert reader.verify_content_hash() == info.content_hash
    assert content_hash(reader.iter_episodes()) == info.content_hash
    assert info.mlflow_tags() == {"data.mw/pick-v1.content_hash": info.content_hash}
    # same data, same hash; one changed reward, another hash
    again = write_vector("mw/pick-v2", episodes)
    assert again.content_hash == info.content_hash
    changed = [episodes[0], Episode(**{**episodes[1].__dict__, "rewards": episodes[1].rewards + 1})]
    assert content_hash(changed) != content_hash(episodes)


def test_interrupted_write_leaves_nothing_that_loads(root):
    import minari

    rng = np.random.default_rng(2)

    def episodes():
        for T in (5, 6, 7):
            yield vector_episode(rng, T)
        raise KeyboardInterrupt  # the collection dies half way

    with pytest.raises(KeyboardInterrupt):
        write_vector("mw/crash-v0", episodes(), flush_episodes=1)
    assert not (root / "mw/crash-v0").exists()
    assert [p.name for p in root.iterdir() if p.name.startswith(".dtmem-tmp")] == []
    assert minari.list_local_datasets() == {}

    # a writer that is never committed (process killed) leaves only a hidden temp dir
    writer = DatasetWriter(
        "mw/killed-v0", observation_space=VEC_OBS, action_space=VEC_ACT, env_id="x"
    )
    writer.add_episode(vector_episode(rng, 4))
    writer.flush()
    assert not (root / "mw/killed-v0").exists()
    with pytest.raises(DatasetNotFoundError):
        open_dataset("mw/killed-v0")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert minari.list_local_datasets() == {}
    writer.abort()
    assert list(root.iterdir()) == []


def test_existing_dataset_is_refused_unless_overwrite(root):
    rng = np.random.default_rng(3)
    first = write_vector("mw/x-v0", [vector_episode(rng, 3)])
    with pytest.raises(DatasetExistsError, match="already exists"):
        write_vector("mw/x-v0", [vector_episode(rng, 3)])
    second = write_vector("mw/x-v0", [vector_episode(rng, 5)], overwrite=True)
    assert second.content_hash != first.content_hash
    assert open_dataset("mw/x-v0").total_steps == 5
    assert sorted(p.name for p in root.iterdir()) == ["mw"]


def test_root_resolution(tmp_path, monkeypatch):
    monkeypatch.setenv("MINARI_DATASETS_PATH", str(tmp_path / "env"))
    assert resolve_root() == tmp_path / "env"
    assert resolve_root(tmp_path / "explicit") == tmp_path / "explicit"
    monkeypatch.delenv("MINARI_DATASETS_PATH")
    assert resolve_root().parts[-2:] == (".minari", "datasets")
    rng = np.random.default_rng(4)
    info = write_vector("mw/rooted-v0", [vector_episode(rng, 3)], root=tmp_path / "explicit")
    assert info.path == tmp_path / "explicit" / "mw/rooted-v0"
    assert open_dataset("mw/rooted-v0", root=tmp_path / "explicit").total_episodes == 1


@pytest.mark.parametrize("data_format", ["arrow", "hdf5"])
def test_dataset_made_by_minari_reads_and_trains_here(root, data_format):
    """Minari's own writer (create_dataset_from_buffers with whole arrays, env=None)."""

    from dtmem.data.sampler import build_sampler

    rng = np.random.default_rng(5)
    episodes = [vector_episode(rng, T) for T in (12, 9, 15)]
    write_with_minari(f"elsewhere/{data_format}-v0", episodes, data_format)
    reader = open_dataset(f"elsewhere/{data_format}-v0")
    assert reader.stored_content_hash is None and reader.env_id is None
    np.testing.assert_array_equal(reader.episode_lengths(), [12, 9, 15])
    np.testing.assert_array_equal(reader.read_episode(2).observations, episodes[2].observations)
    cfg = DataConfig(
        datasets=[{"id": f"elsewhere/{data_format}-v0"}], context=7, batch_size=3, return_scale=10
    )
    sampler = build_sampler(cfg, expected_obs_shape=(OBS_DIM,))
    batch = next(iter(sampler))
    assert batch.observations.shape == (3, 7, OBS_DIM)
    assert batch.actions.shape == (3, 7, ACT_DIM)
    assert len(validate_dataset(f"elsewhere/{data_format}-v0").content_hash or "") == 64


def test_foreign_image_dataset_without_jpeg_key_reads_raw(root):
    """Minari 0.5.4 treats a missing 'jpeg_encoding' key as True; other releases wrote raw."""
    rng = np.random.default_rng(6)
    frames = rng.integers(0, 256, (6, 84, 84), dtype=np.uint8)
    ep = Episode(frames, rng.integers(0, 18, 5), np.ones(5), np.zeros(5, bool), np.zeros(5, bool))
    write_dataset(
        "old/atari-v0",
        [ep],
        observation_space=gym.spaces.Box(0, 255, (84, 84), np.uint8),
        action_space=gym.spaces.Discrete(18),
        env_id="ALE/Pong-v5",
    )
    meta_file = root / "old/atari-v0/data/metadata.json"
    meta = json.loads(meta_file.read_text())
    del meta["jpeg_encoding"]
    meta_file.write_text(json.dumps(meta))
    np.testing.assert_array_equal(open_dataset("old/atari-v0").read_episode(0).observations, frames)


def _one_line(err: pytest.ExceptionInfo[BaseException]) -> str:
    text = str(err.value)
    assert "\n" not in text
    return text


def test_bad_input_errors_are_one_line_and_name_the_file(root):
    rng = np.random.default_rng(7)
    with pytest.raises(DatasetNotFoundError) as err:
        open_dataset("nowhere/missing-v0")
    assert str(root / "nowhere/missing-v0") in _one_line(err)

    with pytest.raises(DataError, match="expected"):
        open_dataset("no-version")

    bad = vector_episode(rng, 6)
    bad.rewards[3] = np.nan
    with pytest.raises(NonFiniteDataError) as err:
        write_vector("mw/nan-v0", [vector_episode(rng, 4), bad])
    assert "mw/nan-v0: episode 1" in _one_line(err) and "rewards" in str(err.value)
    assert not (root / "mw/nan-v0").exists()

    inf_obs = vector_episode(rng, 5)
    inf_obs.observations[2, 7] = np.inf
    with pytest.raises(NonFiniteDataError, match="observations"):
        write_vector("mw/inf-v0", [inf_obs])

    wrong = vector_episode(rng, 5)
    with pytest.raises(ObservationShapeError) as err:
        write_dataset(
            "mw/shape-v0",
            [wrong],
            observation_space=gym.spaces.Box(-1, 1, (OBS_DIM + 1,), np.float32),
            action_space=VEC_ACT,
            env_id="x",
        )
    _one_line(err)

    write_vector("mw/reach-v3", [vector_episode(rng, 5)])
    reader = open_dataset("mw/reach-v3")
    check_observation_shape(reader, (OBS_DIM,))
    with pytest.raises(ObservationShapeError) as err:
        check_observation_shape(reader, (39,))
    assert str(reader.path) in _one_line(err) and "(39,)" in str(err.value)
    with pytest.raises(ObservationShapeError, match=r"\(4, 17\)"):
        check_observation_shape(reader, (OBS_DIM,), frame_stack=4)

    check_env(reader, "Meta-World/reach-v3")
    check_env(reader, "REACH-v3")  # the task name, any case
    with pytest.raises(EnvMismatchError) as err:
        check_env(reader, "Meta-World/push-v3")
    assert "reach-v3" in _one_line(err) and "push-v3" in str(err.value)


def test_nan_in_a_foreign_dataset_is_caught_on_read(root):
    import minari
    from minari.data_collector.episode_buffer import EpisodeBuffer

    rng = np.random.default_rng(8)
    ep = vector_episode(rng, 6)
    obs = ep.observations.copy()
    obs[4, 2] = np.nan
    buffer = EpisodeBuffer(
        observations=obs,
        actions=ep.actions,
        rewards=ep.rewards,
        terminations=ep.terminations,
        truncations=ep.truncations,
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        minari.create_dataset_from_buffers(
            "elsewhere/nan-v0",
            [buffer],
            env=None,
            observation_space=VEC_OBS,
            action_space=VEC_ACT,
            data_format="arrow",
        )
    with pytest.raises(NonFiniteDataError) as err:
        open_dataset("elsewhere/nan-v0").read_episode(0)
    assert "elsewhere/nan-v0/data/0" in _one_line(err) and "observations" in str(err.value)


def test_data_config_from_yaml(tmp_path):
    path = tmp_path / "data.yaml"
    path.write_text(
        "datasets:\n"
        "  - {id: dtmem/atari/breakout-v0, env: Breakout}\n"
        "  - {id: dtmem/atari/pong-v0, weight: 2.0}\n"
        "returns: atari_bins\nframe_stack: 4\ncontext: 28\nbatch_size: 3\n"
    )
    cfg = load_config(DataConfig, path, ["episode_fraction=0.1"])
    assert cfg.datasets[1].weight == 2.0 and cfg.datasets[0].env == "Breakout"
    assert cfg.episode_fraction == 0.1 and cfg.root is None
    with pytest.raises(ConfigError, match="batch_sizee: unknown field"):
        load_config(DataConfig, path, ["batch_sizee=3"])
    with pytest.raises(ConfigError, match="listed twice"):
        load_config(DataConfig, None, ["datasets=[{id: a-v0}, {id: a-v0}]"])
    with pytest.raises(ConfigError, match="episode_fraction"):
        load_config(DataConfig, path, ["episode_fraction=0"])
    with pytest.raises(ConfigError, match="normalize_states"):
        load_config(DataConfig, path, ["normalize_states=true"])
    for name, field in DataConfig.model_fields.items():
        assert field.description, name


# --- env spec and author: minari's recover_environment() ----------------------------------


def test_datasets_record_an_env_spec_that_minari_recovers(root):
    import minari

    from dtmem.data.env_specs import recording_env_spec

    rng = np.random.default_rng(9)
    write_vector(
        "mw/spec-v0",
        [vector_episode(rng, 4)],
        env_spec=recording_env_spec("Meta-World/reach-v3"),
        author="dtmem collect",
    )
    frames = rng.integers(0, 256, (5, 84, 84), dtype=np.uint8)
    write_dataset(
        "ale/spec-v0",
        [Episode(frames, rng.integers(0, 18, 4), np.ones(4), np.zeros(4, bool), np.ones(4, bool))],
        observation_space=gym.spaces.Box(0, 255, (84, 84), np.uint8),
        action_space=gym.spaces.Discrete(18),
        env_id="ALE/Breakout-v5",
        env_spec=recording_env_spec("ALE/Breakout-v5"),
    )
    mw = minari.load_dataset("mw/spec-v0")
    assert mw.storage.metadata["author"] == {"dtmem collect"}
    env = mw.recover_environment()
    try:
        assert env.observation_space.shape == (39,) and env.action_space.shape == (4,)
        obs, _ = env.reset(seed=0)
        assert obs.shape == (39,)
    finally:
        env.close()
    atari = minari.load_dataset("ale/spec-v0").recover_environment()
    try:  # the frames the dataset stores: single 84x84 grayscale, the full action set
        assert atari.observation_space == gym.spaces.Box(0, 255, (84, 84), np.uint8)
        assert atari.action_space == gym.spaces.Discrete(18)
    finally:
        atari.close()
    assert recording_env_spec("elsewhere/thing") is None
    with pytest.raises(DataError, match="does not serialise"):
        write_vector("mw/lambda-v0", [vector_episode(rng, 3)], env_spec=_lambda_spec())
    assert not any(root.glob(".dtmem-tmp-*"))


def _lambda_spec():
    from gymnasium.envs.registration import EnvSpec

    return EnvSpec(id="Made/Here-v0", entry_point=lambda: None)


# --- damaged datasets: one line naming the file ------------------------------------------


def test_damaged_dataset_files_give_one_line_naming_the_file(root):

    from dtmem.data.sampler import build_sampler

    rng = np.random.default_rng(10)

    def fresh(dataset_id: str) -> Path:
        write_vector(dataset_id, [vector_episode(rng, T) for T in (6, 5, 7)])
        return root / dataset_id / "data"

    def sampler_error(dataset_id: str) -> str:
        cfg = DataConfig(datasets=[{"id": dataset_id}], context=3, batch_size=2)
        with pytest.raises(DataError) as err:
            for _ in build_sampler(cfg).iter_epoch():  # every episode is read once
                pass
        return _one_line(err)

    # a truncated arrow episode
    data = fresh("bad/truncated-v0")
    arrow = data / "1" / "part-0.arrow"
    arrow.write_bytes(arrow.read_bytes()[: arrow.stat().st_size // 2])
    with pytest.raises(DataError) as err:
        open_dataset("bad/truncated-v0").read_episode(1)
    assert _one_line(err).startswith(f"{arrow}: unreadable arrow file")
    assert str(arrow) in sampler_error("bad/truncated-v0")

    # the dataset's metadata file is gone (not "no such dataset": the directory is there)
    data = fresh("bad/nometa-v0")
    (data / "metadata.json").unlink()
    with pytest.raises(DataError) as err:
        open_dataset("bad/nometa-v0")
    assert _one_line(err).startswith(f"{data / 'metadata.json'}: missing")

    # metadata.json that is not JSON, or whose counts lie
    data = fresh("bad/garbled-v0")
    (data / "metadata.json").write_text('{"total_episodes": 3, "total_st')
    assert sampler_error("bad/garbled-v0").startswith(f"{data / 'metadata.json'}: unreadable")
    for field, value, said in (("total_steps", 99, "total_steps says 99"),
                               ("total_episodes", 5, "total_episodes says 5")):  # fmt: skip
        data = fresh(f"bad/lies-{field.replace('_', '')}-v0")
        meta = json.loads((data / "metadata.json").read_text())
        meta[field] = value
        meta.pop("dtmem")  # as a dataset made elsewhere: lengths from each episode's metadata
        (data / "metadata.json").write_text(json.dumps(meta))
        message = sampler_error(f"bad/lies-{field.replace('_', '')}-v0")
        assert message.startswith(str(data / "metadata.json")) and said in message

    # an episode whose rows disagree with the lengths the metadata gives
    data = fresh("bad/length-v0")
    meta = json.loads((data / "metadata.json").read_text())
    meta["dtmem"]["episode_lengths"] = [5, 6, 7]  # episodes 0 and 1 swapped
    (data / "metadata.json").write_text(json.dumps(meta))
    message = sampler_error("bad/length-v0")
    assert "steps, but the dataset's metadata says" in message and str(data) in message

    # a truncated hdf5 file written by Minari itself
    write_with_minari("bad/hdf5-v0", [vector_episode(rng, 8), vector_episode(rng, 6)], "hdf5")
    h5 = root / "bad/hdf5-v0/data/main_data.hdf5"
    h5.write_bytes(h5.read_bytes()[:1000])
    assert sampler_error("bad/hdf5-v0").startswith(str(root / "bad/hdf5-v0/data"))


# --- full and read-only disks ------------------------------------------------------------


def test_a_write_that_fails_midway_leaves_nothing_and_says_one_line(root, monkeypatch):
    import errno

    from dtmem.data import writer as writer_module
    from dtmem.fileio import DiskError

    rng = np.random.default_rng(12)
    storage_cls = writer_module._writer_storage_class()
    real = storage_cls.update_episodes
    calls = {"n": 0}

    def fills_up(self, episodes):
        calls["n"] += 1
        if calls["n"] == 2:  # the first flush lands, the second finds the disk full
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(self, episodes)

    monkeypatch.setattr(storage_cls, "update_episodes", fills_up)
    with pytest.raises(DiskError) as err:
        write_vector("full/disk-v0", [vector_episode(rng, 4) for _ in range(5)], flush_episodes=2)
    assert (
        _one_line(err)
        == f"{root / 'full/disk-v0'}: cannot write (the disk is full; free space or write elsewhere)"
    )
    assert calls["n"] == 2
    assert not (root / "full/disk-v0").exists() and not any(root.glob(".dtmem-tmp-*"))

    # the last step, moving the finished dataset into place, fails the same way
    monkeypatch.setattr(storage_cls, "update_episodes", real)

    def no_rename(src, dst):
        raise OSError(errno.EROFS, "Read-only file system")

    monkeypatch.setattr(writer_module.os, "rename", no_rename)
    with pytest.raises(DiskError, match="not writable") as err:
        write_vector("full/rename-v0", [vector_episode(rng, 4)])
    _one_line(err)
    assert not (root / "full/rename-v0").exists() and not any(root.glob(".dtmem-tmp-*"))


def test_dataset_root_that_cannot_take_the_data_is_refused_first(root, monkeypatch, tmp_path):
    import errno
    import shutil
    from collections import namedtuple

    from dtmem.data.minari_io import check_dataset_root
    from dtmem.fileio import DiskError

    assert check_dataset_root(None, need_bytes=1) == root.absolute()
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    with pytest.raises(DiskError) as err:
        check_dataset_root(blocker / "datasets", need_bytes=1)
    assert str(blocker) in _one_line(err)

    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(shutil, "disk_usage", lambda _: usage(10 * 2**20, 9 * 2**20, 2**20))
    with pytest.raises(DiskError, match="only 1 MiB free, 100 MiB needed") as err:
        check_dataset_root(None)
    assert str(root.absolute()) in _one_line(err)

    # a read-only mount (root ignores permission bits, so the probe write is what fails)
    monkeypatch.undo()
    real_write = Path.write_bytes

    def read_only(self, data):
        if self.name.startswith(".dtmem-probe-"):
            raise OSError(errno.EROFS, "Read-only file system")
        return real_write(self, data)

    monkeypatch.setattr(Path, "write_bytes", read_only)
    with pytest.raises(DiskError, match="not writable") as err:
        check_dataset_root(tmp_path / "ro", need_bytes=1)
    _one_line(err)


def test_dataset_ids_in_the_config_are_minari_ids_inside_the_root():
    from pydantic import ValidationError

    for bad, says in (("../../x-v0", "not a safe id"), ("breakout", "name-v<version>")):
        with pytest.raises(ValidationError, match=re.escape(says)):
            DataConfig(datasets=[{"id": bad}])
    assert DataConfig(datasets=[{"id": "dtmem/atari/breakout-dqn-v0"}]).datasets[0].weight == 1
