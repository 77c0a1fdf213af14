"""The sharded, lazy, resumable multi-task sampler."""

from __future__ import annotations

from collections import Counter

import gymnasium as gym
import numpy as np
import pytest
import torch

from dtmem.config.data import DataConfig
from dtmem.data.episodes import DataError, Episode, ObservationShapeError
from dtmem.data.minari_io import DatasetReader, open_dataset, write_dataset
from dtmem.data.sampler import build_sampler, plan_epoch
from dtmem.data.windows import (
    StateStats,
    atari_return_bins,
    atari_reward_classes,
    continuous_returns_to_go,
    load_state_stats,
    make_window,
    to_env_action,
)

OBS_DIM, ACT_DIM, K, B = 17, 5, 7, 3


@pytest.fixture
def root(tmp_path):
    return tmp_path / "datasets"


def vector_dataset(root, dataset_id: str, lengths, seed: int, env="reach-v3", shift=0.0):
    rng = np.random.default_rng(seed)
    episodes = [
        Episode(
            observations=(rng.standard_normal((T + 1, OBS_DIM)) * 3 + shift).astype(np.float32),
            actions=rng.uniform(-1, 1, (T, ACT_DIM)).astype(np.float32),
            rewards=rng.uniform(0, 10, T).astype(np.float32),
            terminations=np.zeros(T, bool),
            truncations=np.r_[np.zeros(T - 1, bool), True],
        )
        for T in lengths
    ]
    return write_dataset(
        dataset_id,
        episodes,
        observation_space=gym.spaces.Box(-np.inf, np.inf, (OBS_DIM,), np.float32),
        action_space=gym.spaces.Box(-1, 1, (ACT_DIM,), np.float32),
        env_id=f"Meta-World/{env}",
        task=env,
        root=root,
    )


def atari_dataset(root, dataset_id: str, lengths, seed: int):
    rng = np.random.default_rng(seed)
    episodes = [
        Episode(
            observations=rng.integers(0, 256, (T + 1, 84, 84), dtype=np.uint8),
            actions=rng.integers(0, 18, T),
            rewards=rng.choice([0.0, 0.0, 1.0, -1.0, 4.0], T).astype(np.float32),
            terminations=np.r_[np.zeros(T - 1, bool), True],
            truncations=np.zeros(T, bool),
        )
        for T in lengths
    ]
    return write_dataset(
        dataset_id,
        episodes,
        observation_space=gym.spaces.Box(0, 255, (84, 84), np.uint8),
        action_space=gym.spaces.Discrete(18),
        env_id="ALE/Pong-v5",
        task="Pong",
        root=root,
    )


LENGTHS = [3, 40, 17, 8, 25, 1, 13, 30, 9, 22, 5, 11, 19, 7, 27, 2, 14]  # 17 episodes


def config(root, datasets, **kw) -> DataConfig:
    return DataConfig(datasets=datasets, root=str(root), **{"context": K, "batch_size": B, **kw})


def plan_windows(sampler, epoch):
    """(task, episode id, start, length) of every window this worker yields in ``epoch``."""
    plan = sampler.plan(epoch)
    out = []
    for t, e, s, n in zip(plan.task, plan.episode, plan.start, plan.length, strict=True):
        assert 1 <= n <= min(K, sampler.sources[t].lengths[e] - s)
        out.append((int(t), int(sampler.sources[t].episode_ids[e]), int(s), int(n)))
    return out


def test_shards_are_disjoint_and_every_step_is_visited_once(root):
    vector_dataset(root, "mw/a-v0", LENGTHS, seed=0)
    vector_dataset(root, "mw/b-v0", LENGTHS[::-1][:11], seed=1)
    cfg = config(root, [{"id": "mw/a-v0"}, {"id": "mw/b-v0"}])
    world = 3
    samplers = [build_sampler(cfg, rank=r, world_size=world) for r in range(world)]
    for epoch in (0, 1):
        per_rank = [plan_windows(s, epoch) for s in samplers]
        assert len({len(w) for w in per_rank}) == 1  # every worker yields the same number
        assert len({s.batches_in_epoch(epoch) for s in samplers}) == 1
        episodes = [{(t, e) for t, e, _, _ in w} for w in per_rank]
        for r in range(world):
            for q in range(r + 1, world):
                assert not episodes[r] & episodes[q], "an episode went to two workers"
        steps = Counter()
        for w in per_rank:
            for t, e, s, n in w:
                for step in range(s, s + n):
                    steps[(t, e, step)] += 1
        assert max(steps.values()) == 1, "a step was seen twice in an epoch"

    # one worker, batch 1: every step of every episode exactly once
    single = build_sampler(cfg.model_copy(update={"batch_size": 1}))
    steps = Counter()
    for t, e, s, n in plan_windows(single, 0):
        steps.update((t, e, step) for step in range(s, s + n))
    expected = {(0, e, st) for e, T in enumerate(LENGTHS) for st in range(T)}
    expected |= {(1, e, st) for e, T in enumerate(LENGTHS[::-1][:11]) for st in range(T)}
    assert set(steps) == expected and set(steps.values()) == {1}


def test_batches_match_the_pure_window_function(root):
    vector_dataset(root, "mw/a-v0", LENGTHS, seed=2)
    vector_dataset(root, "mw/b-v0", [6, 31, 12], seed=3)
    cfg = config(root, [{"id": "mw/a-v0"}, {"id": "mw/b-v0"}], return_scale=50.0)
    sampler = build_sampler(cfg, rank=1, world_size=2)
    windows = plan_windows(sampler, 0)
    readers = {0: open_dataset("mw/a-v0", root), 1: open_dataset("mw/b-v0", root)}
    for i, batch in enumerate(sampler.iter_epoch()):
        assert (
            batch.observations.shape == (B, K, OBS_DIM)
            and batch.observations.dtype == torch.float32
        )
        assert batch.actions.shape == (B, K, ACT_DIM)
        for b in range(B):
            task, episode, start, length = windows[i * B + b]
            ep = readers[task].read_episode(episode)
            ref = make_window(
                ep.observations,
                ep.actions,
                continuous_returns_to_go(ep.rewards, 50.0),
                ep.rewards,
                start,
                K,
                length=length,
            )
            assert batch.task_id[b] == task
            np.testing.assert_array_equal(batch.observations[b].numpy(), ref.observations)
            np.testing.assert_array_equal(batch.actions[b].numpy(), ref.actions)
            np.testing.assert_allclose(batch.returns_to_go[b].numpy(), ref.returns_to_go)
            np.testing.assert_array_equal(batch.rewards[b].numpy(), ref.rewards)
            np.testing.assert_array_equal(batch.timesteps[b].numpy(), ref.timesteps)
            np.testing.assert_array_equal(batch.mask[b].numpy(), ref.mask)
    assert sampler.epoch == 1 and sampler.batch_index == 0


def test_atari_windows_stack_uint8_frames_and_use_mdt_encodings(root):
    atari_dataset(root, "atari/pong-v0", [9, 30, 4, 17, 23], seed=4)
    cfg = config(
        root, [{"id": "atari/pong-v0", "env": "Pong"}], returns="atari_bins", frame_stack=4
    )
    sampler = build_sampler(cfg, expected_obs_shape=(4, 84, 84))
    assert sampler.action_kind == "discrete" and sampler.num_actions == 18
    windows = plan_windows(sampler, 0)
    reader = open_dataset("atari/pong-v0", root)
    batch = next(iter(sampler))
    assert batch.observations.shape == (B, K, 4, 84, 84)
    assert batch.observations.dtype == torch.uint8
    assert batch.actions.dtype == batch.returns_to_go.dtype == batch.rewards.dtype == torch.int64
    for b in range(B):
        _, episode, start, length = windows[b]
        ep = reader.read_episode(episode)
        ref = make_window(
            ep.observations,
            ep.actions,
            atari_return_bins(ep.rewards),
            atari_reward_classes(ep.rewards),
            start,
            K,
            frame_stack=4,
            length=length,
        )
        np.testing.assert_array_equal(batch.observations[b].numpy(), ref.observations)
        np.testing.assert_array_equal(batch.returns_to_go[b].numpy(), ref.returns_to_go)
        np.testing.assert_array_equal(batch.rewards[b].numpy(), ref.rewards)
    with pytest.raises(ObservationShapeError):
        build_sampler(cfg, expected_obs_shape=(84, 84))


def test_deterministic_per_seed_epoch_and_rank(root):
    vector_dataset(root, "mw/a-v0", LENGTHS, seed=5)
    cfg = config(root, [{"id": "mw/a-v0"}])
    first = [b.observations for b in build_sampler(cfg).iter_epoch()]
    again = [b.observations for b in build_sampler(cfg).iter_epoch()]
    assert all(torch.equal(x, y) for x, y in zip(first, again, strict=True))
    s = build_sampler(cfg)
    assert plan_windows(s, 0) != plan_windows(s, 1)
    other_seed = build_sampler(cfg.model_copy(update={"seed": 1}))
    assert plan_windows(s, 0) != plan_windows(other_seed, 0)
    r0 = build_sampler(cfg, rank=0, world_size=2)
    r1 = build_sampler(cfg, rank=1, world_size=2)
    assert plan_windows(r0, 0) != plan_windows(r1, 0)


def test_resume_mid_epoch_and_across_epochs(root):
    vector_dataset(root, "mw/a-v0", LENGTHS, seed=6)
    cfg = config(root, [{"id": "mw/a-v0"}])
    reference = build_sampler(cfg, rank=1, world_size=2)
    per_epoch = reference.batches_in_epoch(0)
    stream = iter(reference)
    expected = [next(stream) for _ in range(per_epoch + 4)]

    for cut in (3, per_epoch - 1, per_epoch + 1):
        sampler = build_sampler(cfg, rank=1, world_size=2)
        it = iter(sampler)
        for _ in range(cut):
            next(it)
        state = sampler.state_dict()
        resumed = build_sampler(cfg, rank=1, world_size=2)
        resumed.load_state_dict(state)
        nxt = next(iter(resumed))
        assert torch.equal(nxt.observations, expected[cut].observations)
        assert torch.equal(nxt.timesteps, expected[cut].timesteps)

    state = reference.state_dict()
    with pytest.raises(DataError, match="world_size"):
        build_sampler(cfg, rank=1, world_size=3).load_state_dict(state)
    with pytest.raises(DataError, match="fingerprint"):
        build_sampler(cfg.model_copy(update={"context": 5}), rank=1, world_size=2).load_state_dict(
            state
        )


def test_lazy_index_and_bounded_cache(root, monkeypatch):
    vector_dataset(root, "mw/a-v0", LENGTHS * 3, seed=7)
    reads = Counter()
    original = DatasetReader.read_episode

    def counting(self, index):
        reads[index] += 1
        return original(self, index)

    monkeypatch.setattr(DatasetReader, "read_episode", counting)
    budget_mb = 0.01  # ~10 KB: a handful of these episodes
    sampler = build_sampler(
        config(root, [{"id": "mw/a-v0"}], cache_mb=budget_mb, shuffle_episodes=2)
    )
    assert sum(reads.values()) == 0, "building the index read episode data"
    assert sampler.index_seconds >= 0.0
    for _ in sampler.iter_epoch():
        pass
    stats = sampler.cache_stats
    largest = max(LENGTHS) * (OBS_DIM + ACT_DIM + 2) * 4 + OBS_DIM * 4
    assert stats["peak_bytes"] <= max(budget_mb * 2**20, 0) + largest
    assert stats["loads"] == sum(reads.values()) > 0
    # locality: windows are grouped by episode, so far fewer loads than windows
    assert stats["loads"] < sampler.batches_in_epoch(0) * B / 2


def test_task_weights_and_task_ids(root):
    vector_dataset(root, "mw/a-v0", LENGTHS, seed=8)
    vector_dataset(root, "mw/b-v0", LENGTHS, seed=9, env="push-v3")
    base = config(root, [{"id": "mw/a-v0"}, {"id": "mw/b-v0"}], batch_size=1)
    steps = Counter()
    for t, _, _, n in plan_windows(build_sampler(base), 0):
        steps[t] += n
    assert steps[0] == steps[1] == sum(LENGTHS)  # weight 1: every step once
    natural = Counter(t for t, *_ in plan_windows(build_sampler(base), 0))
    heavy = config(
        root, [{"id": "mw/a-v0", "weight": 2.0}, {"id": "mw/b-v0", "env": "push-v3"}], batch_size=1
    )
    counts = Counter(t for t, *_ in plan_windows(build_sampler(heavy), 0))
    assert counts[0] == 2 * natural[0] and counts[1] == natural[1]
    # on two workers the heavier task takes a second, freshly permuted pass on each
    sampler = build_sampler(heavy.model_copy(update={"batch_size": B}), rank=0, world_size=2)
    tasks = set()
    for batch in sampler.iter_epoch():
        tasks.update(batch.task_id.tolist())
    assert tasks == {0, 1}
    with pytest.raises(DataError, match="push-v3"):
        build_sampler(config(root, [{"id": "mw/a-v0", "env": "push-v3"}]))


def test_episode_fraction_is_a_fixed_subset(root):
    vector_dataset(root, "mw/a-v0", LENGTHS * 2, seed=10)
    cfg = config(root, [{"id": "mw/a-v0"}], episode_fraction=0.3)
    sampler = build_sampler(cfg)
    ids = sampler.sources[0].episode_ids
    assert len(ids) == round(0.3 * len(LENGTHS) * 2)
    np.testing.assert_array_equal(ids, build_sampler(cfg).sources[0].episode_ids)
    used = {e for epoch in (0, 1, 2) for _, e, *_ in plan_windows(sampler, epoch)}
    assert used == set(ids.tolist())


def test_state_normalisation_is_computed_saved_and_reused(root, tmp_path):
    vector_dataset(root, "mw/a-v0", LENGTHS, seed=11, shift=5.0)
    path = tmp_path / "stats" / "state.json"
    cfg = config(
        root, [{"id": "mw/a-v0"}], batch_size=1, normalize_states=True, state_stats_path=str(path)
    )
    sampler = build_sampler(cfg)
    assert path.exists()
    stats = load_state_stats(path)
    assert stats.count == sum(LENGTHS)
    assert 4.0 < stats.mean.mean() < 6.0
    values = torch.cat([b.observations[b.mask] for b in sampler.iter_epoch()])
    assert values.shape == (sum(LENGTHS), OBS_DIM)
    np.testing.assert_allclose(values.mean(0).numpy(), 0.0, atol=1e-4)
    np.testing.assert_allclose(values.std(0, unbiased=False).numpy(), 1.0, atol=1e-4)
    path.write_text(path.read_text().replace('"count": ', '"count": 1'))
    assert build_sampler(cfg).state_stats.count != stats.count  # loaded, not recomputed


def test_too_little_data_and_mismatched_datasets(root):
    vector_dataset(root, "mw/a-v0", [2, 3], seed=12)
    atari_dataset(root, "atari/pong-v0", [5, 6], seed=13)
    with pytest.raises(DataError, match="too little data"):
        next(iter(build_sampler(config(root, [{"id": "mw/a-v0"}], batch_size=64))))
    with pytest.raises(ObservationShapeError, match="atari/pong-v0"):
        build_sampler(config(root, [{"id": "mw/a-v0"}, {"id": "atari/pong-v0"}]))


def test_plan_epoch_is_a_pure_function_of_the_index():
    lengths = [np.array([5, 9, 2, 14, 7]), np.array([3, 21])]
    kw = dict(epoch=2, world_size=2, context=4, batch_size=3, seed=7, group=2)
    a = plan_epoch(lengths, [1.0, 1.0], rank=0, **kw)
    b = plan_epoch(lengths, [1.0, 1.0], rank=0, **kw)
    np.testing.assert_array_equal(a.task, b.task)
    np.testing.assert_array_equal(a.start, b.start)
    assert a.task.size == a.num_batches * 3
    c = plan_epoch(lengths, [1.0, 1.0], rank=1, **kw)
    assert c.num_batches == a.num_batches
    with pytest.raises(ValueError):
        plan_epoch(lengths, [1.0, 1.0], rank=2, **kw)


# --- datasets made elsewhere: actions outside the tanh head's range -----------------------


def pendulum_dataset(root, monkeypatch, dataset_id="elsewhere/pendulum-v0", lengths=(23, 17, 30)):
    """A plain Minari dataset as Minari itself writes one for Pendulum-v1 (no dtmem metadata):
    3-dim states, one action in [-2, 2], most of it beyond [-1, 1]."""
    import warnings

    import minari
    from minari.data_collector.episode_buffer import EpisodeBuffer

    monkeypatch.setenv("MINARI_DATASETS_PATH", str(root))
    rng = np.random.default_rng(11)
    buffers, actions = [], []
    for T in lengths:
        a = rng.uniform(-2, 2, (T, 1)).astype(np.float32)
        actions.append(a)
        theta = rng.uniform(-np.pi, np.pi, T + 1)
        obs = np.stack([np.cos(theta), np.sin(theta), rng.uniform(-8, 8, T + 1)], 1)
        buffers.append(
            EpisodeBuffer(
                observations=obs.astype(np.float32),
                actions=a,
                rewards=-(theta[:-1] ** 2),
                terminations=np.zeros(T, bool),
                truncations=np.r_[np.zeros(T - 1, bool), True],
            )
        )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # minari warns about missing author etc.
        minari.create_dataset_from_buffers(dataset_id, buffers, env="Pendulum-v1")
    return actions


def test_pendulum_actions_train_in_the_head_range_and_act_in_the_env_range(root, monkeypatch):
    actions = pendulum_dataset(root, monkeypatch)
    raw = np.concatenate(actions)
    assert (np.abs(raw) > 1).mean() > 0.4  # what the tanh head could never predict
    cfg = DataConfig(datasets=[{"id": "elsewhere/pendulum-v0"}], context=K, batch_size=B)
    sampler = build_sampler(cfg, expected_obs_shape=(3,))
    stats = sampler.state_stats
    assert stats is not None and not stats.normalizes_states and stats.bounds is not None
    np.testing.assert_array_equal(stats.bounds[0], [-2.0])
    np.testing.assert_array_equal(stats.bounds[1], [2.0])
    plan = sampler.plan(0)
    seen = 0
    for b, batch in enumerate(sampler.iter_epoch()):
        assert batch.actions.shape == (B, K, 1)
        for i in range(B):
            j = b * B + i
            ep, s, L = int(plan.episode[j]), int(plan.start[j]), int(plan.length[j])
            window = batch.actions[i, :L].numpy()
            assert np.abs(window).max() <= 1.0
            # acting maps the model's range back onto exactly the dataset's actions
            episode = sampler.sources[0].episode_ids[ep]
            np.testing.assert_allclose(
                to_env_action(window, stats), actions[episode][s : s + L], atol=1e-6
            )
            seen += L
    assert seen > 0.8 * raw.shape[0]

    # normalised states: the statistics carry both transforms, and saved they come back whole
    normed = build_sampler(
        DataConfig(
            datasets=[{"id": "elsewhere/pendulum-v0"}],
            context=K,
            batch_size=B,
            normalize_states=True,
            state_stats_path=str(root / "stats.json"),
        )
    )
    both = normed.state_stats
    assert both is not None and both.normalizes_states and both.bounds is not None
    loaded = load_state_stats(root / "stats.json")
    assert loaded.bounds is not None and loaded.count == both.count
    # a model trained on other bounds (or on unscaled actions) does not fit this data
    other = StateStats(both.mean, both.std, both.count, np.array([-1.0]), np.array([3.0]))
    with pytest.raises(DataError, match=r"pendulum-v0/data/metadata\.json: actions in"):
        build_sampler(normed_cfg(root), state_stats=other)
    with pytest.raises(DataError, match="as they are"):
        build_sampler(normed_cfg(root), state_stats=StateStats(both.mean, both.std, both.count))


def normed_cfg(root) -> DataConfig:
    return DataConfig(
        datasets=[{"id": "elsewhere/pendulum-v0"}], context=K, batch_size=B, normalize_states=True
    )


def test_unbounded_continuous_actions_are_refused_in_one_line(root):
    rng = np.random.default_rng(12)
    ep = Episode(
        rng.standard_normal((9, OBS_DIM)).astype(np.float32),
        rng.standard_normal((8, 2)).astype(np.float32),
        np.ones(8, np.float32),
        np.zeros(8, bool),
        np.r_[np.zeros(7, bool), True],
    )
    write_dataset(
        "elsewhere/free-v0",
        [ep],
        observation_space=gym.spaces.Box(-np.inf, np.inf, (OBS_DIM,), np.float32),
        action_space=gym.spaces.Box(-np.inf, np.inf, (2,), np.float32),
        env_id="elsewhere",
        root=root,
    )
    cfg = DataConfig(
        datasets=[{"id": "elsewhere/free-v0"}], root=str(root), context=4, batch_size=1
    )
    with pytest.raises(DataError) as err:
        build_sampler(cfg)
    message = str(err.value)
    assert "\n" not in message and "unbounded" in message
    assert message.startswith(str(root / "elsewhere/free-v0/data/metadata.json"))
