"""DQN Replay importer, on small files written in exactly the real layout."""

from __future__ import annotations

import gzip

import numpy as np
import pytest

from dtmem.config.data import DataConfig
from dtmem.data.dqn_replay import (
    NpyGzReader,
    episode_bounds,
    import_dqn_replay,
    list_checkpoints,
    load_npy_gz,
    minimal_action_set,
    replay_file,
    rom_id,
    strip_padding,
)
from dtmem.data.episodes import CorruptFileError, DatasetFormatError, NonFiniteDataError
from dtmem.data.minari_io import open_dataset
from dtmem.data.sampler import build_sampler

ACTION_SET = [0, 1, 3, 4, 11, 12]  # Pong's minimal action set, as full-set indices


def save_gz(path, array):
    """What Dopamine does: np.save into gzip.open."""
    with gzip.open(path, "wb") as f:
        np.save(f, array, allow_pickle=False)


def make_checkpoint(replay_dir, ckpt, episodes, tail, rng, pad=3):
    """Write one checkpoint: a partial head (ckpt > 0), ``episodes`` lengths, ``tail`` slots.

    Every episode starts with ``pad`` zero transitions (Dopamine's stack padding); real frames
    are in [1, 255]. Returns the real (unpadded) slots of each complete episode, in order.
    """
    obs, act, rew, term, real = [], [], [], [], []

    def add(frame, a, r, t):
        obs.append(frame)
        act.append(a)
        rew.append(r)
        term.append(t)

    if ckpt > 0:  # the end of an episode that began in the previous checkpoint
        for i in range(4):
            add(rng.integers(1, 256, (84, 84), dtype=np.uint8), 1, 0.0, int(i == 3))
    for T in episodes:
        for _ in range(pad):
            add(np.zeros((84, 84), np.uint8), 0, 0.0, 0)
        first = len(obs)
        for i in range(T):
            add(
                rng.integers(1, 256, (84, 84), dtype=np.uint8),
                int(rng.integers(0, len(ACTION_SET))),
                float(rng.choice([0.0, 1.0, -1.0])),
                int(i == T - 1),
            )
        real.append(slice(first, len(obs)))
    for _ in range(tail):  # an episode cut off by the end of the checkpoint
        add(rng.integers(1, 256, (84, 84), dtype=np.uint8), 2, 1.0, 0)
    arrays = {
        "observation": np.stack(obs),
        "action": np.asarray(act, np.int32),
        "reward": np.asarray(rew, np.float32),
        "terminal": np.asarray(term, np.uint8),
    }
    replay_dir.mkdir(parents=True, exist_ok=True)
    for name, array in arrays.items():
        save_gz(replay_file(replay_dir, name, ckpt), array)
    return arrays, real


@pytest.fixture
def replay(tmp_path):
    """Pong/1/replay_logs with checkpoints 0 and 1."""
    rng = np.random.default_rng(0)
    replay_dir = tmp_path / "dqn" / "Pong" / "1" / "replay_logs"
    ck0 = make_checkpoint(replay_dir, 0, [5, 1, 9], tail=4, rng=rng)
    ck1 = make_checkpoint(replay_dir, 1, [7, 3], tail=2, rng=rng)
    return replay_dir, [ck0, ck1]


def expected_episodes(checkpoints):
    for arrays, real in checkpoints:
        for sl in real:
            yield arrays, sl


def test_import_splits_at_terminals_drops_partials_and_strips_padding(
    replay, tmp_path, monkeypatch
):
    import minari

    replay_dir, checkpoints = replay
    assert list_checkpoints(replay_dir) == [0, 1]
    root = tmp_path / "datasets"
    info = import_dqn_replay(
        replay_dir.parent.parent, "dqn/pong-v0", root=root, action_set=ACTION_SET
    )
    assert info.env_id == "ALE/Pong-v5" and info.task == "Pong"
    expected = list(expected_episodes(checkpoints))
    assert info.total_episodes == len(expected) == 5  # ckpt 1's head, both tails dropped
    assert info.total_steps == 5 + 1 + 9 + 7 + 3

    reader = open_dataset("dqn/pong-v0", root)
    for i, (arrays, sl) in enumerate(expected):
        ep = reader.read_episode(i)
        T = sl.stop - sl.start
        assert ep.observations.shape == (T + 1, 84, 84) and ep.observations.dtype == np.uint8
        np.testing.assert_array_equal(ep.observations[:T], arrays["observation"][sl])
        assert not ep.observations[T].any()  # no frame after the terminal: zeros
        np.testing.assert_array_equal(ep.actions, np.asarray(ACTION_SET)[arrays["action"][sl]])
        np.testing.assert_array_equal(ep.rewards, arrays["reward"][sl])
        np.testing.assert_array_equal(ep.terminations, np.arange(T) == T - 1)
        assert not ep.truncations.any()
    counts = reader.metadata["dtmem"]["counts"]
    assert counts["stripped_padding"] == 3 * 5
    assert counts["dropped_partial_slots"] == (4) + (4 + 2)
    assert reader.verify_content_hash() == info.content_hash

    # plain minari opens it too (MINARI_DATASETS_PATH at the same root)
    monkeypatch.setenv("MINARI_DATASETS_PATH", str(root))
    assert minari.load_dataset("dqn/pong-v0").total_steps == info.total_steps


def test_streaming_chunks_do_not_change_the_result(replay, tmp_path):
    replay_dir, _ = replay
    a = import_dqn_replay(
        replay_dir, "dqn/a-v0", root=tmp_path, action_set=ACTION_SET, chunk_frames=5
    )
    b = import_dqn_replay(
        replay_dir, "dqn/b-v0", root=tmp_path, action_set=ACTION_SET, chunk_frames=100_000
    )
    assert a.content_hash == b.content_hash


def test_max_steps_and_checkpoint_selection(replay, tmp_path):
    replay_dir, _ = replay
    info = import_dqn_replay(
        replay_dir, "dqn/few-v0", root=tmp_path, action_set=ACTION_SET, max_steps=6
    )
    assert info.total_steps == 6 and info.total_episodes == 2  # stops after reaching 6
    only1 = import_dqn_replay(
        replay_dir, "dqn/one-v0", root=tmp_path, action_set=ACTION_SET, checkpoints=[1]
    )
    assert only1.total_steps == 7 + 3
    with pytest.raises(Exception, match="checkpoint 4"):
        import_dqn_replay(
            replay_dir, "dqn/none-v0", root=tmp_path, action_set=ACTION_SET, checkpoints=[4]
        )


def test_truncated_gz_is_a_clear_error_and_writes_nothing(replay, tmp_path):
    replay_dir, _ = replay
    path = replay_file(replay_dir, "observation", 1)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    root = tmp_path / "datasets"
    with pytest.raises(CorruptFileError) as err:
        import_dqn_replay(replay_dir, "dqn/cut-v0", root=root, action_set=ACTION_SET)
    message = str(err.value)
    assert "\n" not in message and str(path) in message and "truncated" in message
    assert not (root / "dqn/cut-v0").exists()
    assert [p for p in root.iterdir() if p.name.startswith(".dtmem-tmp")] == []
    small = replay_file(replay_dir, "terminal", 0)
    small.write_bytes(small.read_bytes()[:-9])
    with pytest.raises(CorruptFileError, match=str(small).replace("$", r"\$")):
        load_npy_gz(small)


def test_bad_arrays_name_the_file(tmp_path):
    rng = np.random.default_rng(1)
    replay_dir = tmp_path / "Pong" / "1" / "replay_logs"
    make_checkpoint(replay_dir, 0, [4, 6], tail=1, rng=rng)
    reward = replay_file(replay_dir, "reward", 0)
    rewards = load_npy_gz(reward)
    rewards[5] = np.nan
    save_gz(reward, rewards)
    with pytest.raises(NonFiniteDataError, match=r"reward_ckpt\.0\.gz"):
        import_dqn_replay(replay_dir, "dqn/nan-v0", root=tmp_path / "d", action_set=ACTION_SET)
    save_gz(reward, np.zeros(len(rewards) - 1, np.float32))
    with pytest.raises(DatasetFormatError, match=r"reward_ckpt\.0\.gz.*entries"):
        import_dqn_replay(replay_dir, "dqn/len-v0", root=tmp_path / "d", action_set=ACTION_SET)
    save_gz(reward, np.zeros(len(rewards), np.float32))
    with pytest.raises(DatasetFormatError, match=r"action_ckpt\.0\.gz"):
        import_dqn_replay(replay_dir, "dqn/act-v0", root=tmp_path / "d", action_set=[0, 1])


def test_imported_game_trains_with_frame_stacks_and_bins(replay, tmp_path):
    replay_dir, _ = replay
    root = tmp_path / "datasets"
    import_dqn_replay(replay_dir, "dqn/pong-v0", root=root, action_set=ACTION_SET)
    cfg = DataConfig(
        datasets=[{"id": "dqn/pong-v0", "env": "ALE/Pong-v5"}],
        root=str(root),
        context=7,
        batch_size=3,
        returns="atari_bins",
        frame_stack=4,
    )
    sampler = build_sampler(cfg, expected_obs_shape=(4, 84, 84))
    batches = list(sampler.iter_epoch())
    assert batches and all(b.observations.shape == (3, 7, 4, 84, 84) for b in batches)
    first = next(b for b in batches if bool((b.timesteps[:, 0] == 0).any()))
    row = int((first.timesteps[:, 0] == 0).nonzero()[0, 0])
    stack0 = first.observations[row, 0].numpy()
    assert not stack0[:3].any() and stack0[3].all()  # zeros before the start, a real frame


def test_pure_helpers():
    bounds, dropped = episode_bounds(np.array([0, 0, 1, 0, 1, 1, 0, 0]), first_is_complete=True)
    assert bounds == [(0, 3), (3, 5), (5, 6)] and dropped == 2
    bounds, dropped = episode_bounds(np.array([0, 0, 1, 0, 1, 1, 0, 0]), first_is_complete=False)
    assert bounds == [(3, 5), (5, 6)] and dropped == 5
    assert episode_bounds(np.zeros(5), True) == ([], 5)
    frames = np.ones((5, 84, 84), np.uint8)
    frames[:2] = 0
    assert strip_padding(frames, np.array([0, 0, 2, 0, 0]), np.zeros(5), max_pad=3) == 2
    assert strip_padding(frames, np.array([0, 1, 2, 0, 0]), np.zeros(5), max_pad=3) == 1
    assert strip_padding(np.zeros((2, 84, 84), np.uint8), np.zeros(2), np.zeros(2), 3) == 1
    assert rom_id("BankHeist") == "bank_heist" and rom_id("Pong") == "pong"
    assert rom_id("MsPacman") == "ms_pacman"


def test_minimal_action_set_from_ale():
    np.testing.assert_array_equal(minimal_action_set("Pong"), ACTION_SET)
    assert len(minimal_action_set("BankHeist")) == 18


def test_npy_gz_reader_streams_rows(tmp_path):
    path = tmp_path / "x.gz"
    array = np.arange(7 * 3 * 2, dtype=np.int32).reshape(7, 3, 2)
    save_gz(path, array)
    with NpyGzReader(path) as reader:
        assert reader.shape == (7, 3, 2) and reader.dtype == np.int32
        parts = [reader.read(3), reader.read(3), reader.read(3), reader.read(3)]
    assert [p.shape[0] for p in parts] == [3, 3, 1, 0]
    np.testing.assert_array_equal(np.concatenate(parts), array)
