"""Pure window transforms, each on small hand-made arrays."""

from __future__ import annotations

import numpy as np
import pytest

from dtmem.data.episodes import DataError
from dtmem.data.stats import action_bounds, check_action_bounds, scale_actions, with_action_bounds
from dtmem.data.windows import (
    NUM_RETURN_BINS,
    StateStats,
    atari_return_bins,
    atari_reward_classes,
    compute_state_stats,
    continuous_returns_to_go,
    load_state_stats,
    make_window,
    normalize_states,
    pad_right,
    returns_to_go,
    save_state_stats,
    stack_frames,
    to_env_action,
    valid_mask,
    window_starts,
)


def test_returns_to_go_sums_the_future():
    r = np.array([1.0, 2.0, 3.0, -4.0])
    np.testing.assert_allclose(returns_to_go(r), [2.0, 1.0, -1.0, -4.0])


def test_continuous_returns_to_go_is_scaled_float32():
    out = continuous_returns_to_go(np.array([1.0, 2.0, 3.0]), return_scale=4.0)
    assert out.dtype == np.float32
    np.testing.assert_allclose(out, [1.5, 1.25, 0.75])
    with pytest.raises(ValueError):
        continuous_returns_to_go(np.ones(3), return_scale=0.0)


def test_atari_return_bins_clip_each_reward_to_its_sign_then_the_sum():
    # signs: 0, 1, -1, 0, 1 -> rtg 1, 1, 0, 1, 1 -> +20
    bins = atari_return_bins(np.array([0.0, 5.0, -2.0, 0.0, 0.5]))
    assert bins.dtype == np.int64
    np.testing.assert_array_equal(bins, [21, 21, 20, 21, 21])


def test_atari_return_bins_clip_the_sum_to_minus_20_and_99():
    high = atari_return_bins(np.ones(130))
    assert high[0] == NUM_RETURN_BINS - 1 == 119  # 130 clipped to 99
    assert high[-1] == 21  # a return of 1
    assert high[130 - 99] == 119 and high[130 - 98] == 118
    low = atari_return_bins(-np.ones(33))
    assert low[0] == 0  # -33 clipped to -20
    assert low[-1] == 19  # -1
    assert ((high >= 0) & (high < 120)).all() and ((low >= 0) & (low < 120)).all()


def test_atari_reward_classes():
    out = atari_reward_classes(np.array([0.0, 2.5, -1.0, 0.0, -0.1, 1.0]))
    assert out.dtype == np.int64
    np.testing.assert_array_equal(out, [0, 1, 3, 0, 3, 1])


def test_pad_right_and_mask():
    x = np.arange(6, dtype=np.float32).reshape(3, 2)
    out = pad_right(x, 5)
    assert out.shape == (5, 2) and out.dtype == np.float32
    np.testing.assert_array_equal(out[:3], x)
    assert (out[3:] == 0).all()
    np.testing.assert_array_equal(valid_mask(3, 5), [True, True, True, False, False])
    with pytest.raises(ValueError):
        pad_right(x, 2)


def _frames(n: int) -> np.ndarray:
    """Frame i is filled with i + 1, so stacks can be read off by value."""
    return np.arange(1, n + 1, dtype=np.uint8)[:, None, None] * np.ones((1, 3, 5), np.uint8)


def test_stack_frames_zero_before_the_episode_start_and_keeps_uint8():
    frames = _frames(6)  # (6, 3, 5)
    out = stack_frames(frames, start=0, length=3, n_stack=4)
    assert out.shape == (3, 4, 3, 5) and out.dtype == np.uint8
    np.testing.assert_array_equal(out[:, :, 0, 0], [[0, 0, 0, 1], [0, 0, 1, 2], [0, 1, 2, 3]])
    late = stack_frames(frames, start=3, length=2, n_stack=4)
    np.testing.assert_array_equal(late[:, :, 2, 4], [[1, 2, 3, 4], [2, 3, 4, 5]])
    assert stack_frames(frames, 5, 1, 4).max() == 6  # raw values, never scaled
    with pytest.raises(ValueError):
        stack_frames(frames, start=4, length=3, n_stack=4)


@pytest.mark.parametrize("T,K", [(10, 4), (3, 7), (17, 5), (1, 3)])
def test_window_starts_cover_every_step_once(T, K):
    for phase in range(min(K, T)):
        starts = window_starts(T, K, phase)
        ends = np.minimum(np.r_[starts[1:], T], T)
        assert starts[0] == 0
        assert (np.diff(starts) > 0).all()
        assert ((ends - starts) <= K).all() and ((ends - starts) >= 1).all()
        covered = np.concatenate([np.arange(s, e) for s, e in zip(starts, ends, strict=True)])
        np.testing.assert_array_equal(covered, np.arange(T))
    np.testing.assert_array_equal(window_starts(10, 4, 0), [0, 4, 8])
    np.testing.assert_array_equal(window_starts(10, 4, 3), [0, 3, 7])
    with pytest.raises(ValueError):
        window_starts(T, K, min(K, T))


def test_make_window_right_pads_and_masks():
    T, K = 5, 7
    obs = np.arange((T + 1) * 17, dtype=np.float32).reshape(T + 1, 17)
    actions = np.arange(T * 5, dtype=np.float32).reshape(T, 5)
    rtg = np.arange(T, dtype=np.float32) + 0.5
    rew = -np.arange(T, dtype=np.float32)
    w = make_window(obs, actions, rtg, rew, start=2, context=K)
    assert w.observations.shape == (K, 17) and w.actions.shape == (K, 5)
    np.testing.assert_array_equal(w.mask, [True] * 3 + [False] * 4)
    np.testing.assert_array_equal(w.timesteps, [2, 3, 4, 0, 0, 0, 0])
    np.testing.assert_array_equal(w.observations[:3], obs[2:5])
    np.testing.assert_array_equal(w.actions[:3], actions[2:5])
    np.testing.assert_array_equal(w.returns_to_go[:3], rtg[2:5])
    assert (w.observations[3:] == 0).all() and (w.returns_to_go[3:] == 0).all()
    with pytest.raises(ValueError):
        make_window(obs, actions, rtg, rew, start=T, context=K)


def test_make_window_with_frame_stack():
    frames = _frames(9)  # T = 8 steps, 9 frames
    actions = np.arange(8, dtype=np.int64)
    rtg = np.arange(8, dtype=np.int64)
    w = make_window(frames, actions, rtg, rtg, start=1, context=3, frame_stack=4)
    assert w.observations.shape == (3, 4, 3, 5) and w.observations.dtype == np.uint8
    np.testing.assert_array_equal(
        w.observations[:, :, 0, 0], [[0, 0, 1, 2], [0, 1, 2, 3], [1, 2, 3, 4]]
    )
    np.testing.assert_array_equal(w.actions, [1, 2, 3])


def test_state_stats_match_numpy_and_centre_constant_features():
    rng = np.random.default_rng(3)
    a = rng.normal(5.0, 2.0, size=(13, 17))
    b = rng.normal(-1.0, 0.5, size=(7, 17))
    a[:, 4] = 3.0
    b[:, 4] = 3.0  # a constant feature
    stats = compute_state_stats([a, np.zeros((0, 17)), b])
    both = np.concatenate([a, b])
    assert stats.count == 20
    np.testing.assert_allclose(stats.mean, both.mean(axis=0), rtol=1e-12)
    expected_std = both.std(axis=0)
    expected_std[4] = 1.0
    np.testing.assert_allclose(stats.std, expected_std, rtol=1e-10)
    z = normalize_states(both, stats)
    assert z.dtype == np.float32
    np.testing.assert_allclose(z.mean(axis=0), 0.0, atol=1e-5)
    assert (z[:, 4] == 0).all()
    with pytest.raises(ValueError):
        compute_state_stats([])


def test_state_stats_save_and_load(tmp_path):
    stats = StateStats(mean=np.array([1.0, -2.0, 3.5]), std=np.array([0.5, 1.0, 2.0]), count=11)
    path = tmp_path / "sub" / "stats.json"
    save_state_stats(stats, path)
    back = load_state_stats(path)
    np.testing.assert_array_equal(back.mean, stats.mean)
    np.testing.assert_array_equal(back.std, stats.std)
    assert back.count == 11
    assert [p.name for p in path.parent.iterdir()] == ["stats.json"]  # no temp file left
    bad = tmp_path / "bad.json"
    bad.write_text('{"mean": [1, 2], "std": [1]}')
    with pytest.raises(DataError, match=r"bad\.json") as err:
        load_state_stats(bad)
    assert "\n" not in str(err.value)
    with pytest.raises(DataError, match="no such"):
        load_state_stats(tmp_path / "missing.json")


# --- actions: the dataset's range <-> the tanh head's [-1, 1] (dtmem.data.stats) -----------


def test_action_bounds_scale_only_what_the_head_cannot_reach():
    import gymnasium as gym

    assert action_bounds(gym.spaces.Box(-1, 1, (4,), np.float32), "d") is None  # Meta-World
    assert action_bounds(gym.spaces.Box(0, 0.5, (2,), np.float32), "d") is None  # inside
    assert action_bounds(gym.spaces.Discrete(18), "d") is None
    low, high = action_bounds(gym.spaces.Box(-2, 2, (1,), np.float32), "d")  # Pendulum-v1
    np.testing.assert_array_equal(low, [-2.0])
    np.testing.assert_array_equal(high, [2.0])
    with pytest.raises(DataError) as err:
        action_bounds(gym.spaces.Box(-np.inf, np.inf, (3,), np.float32), "x/data/metadata.json")
    assert str(err.value).startswith("x/data/metadata.json: action_space")
    assert "unbounded" in str(err.value) and "\n" not in str(err.value)


def test_actions_scale_into_the_head_range_and_back_by_hand():
    # three dims with different ranges, so a swapped axis would show
    low, high = np.array([-2.0, 0.0, -3.0]), np.array([2.0, 10.0, 1.0])
    stats = StateStats(np.zeros(5), np.ones(5), 0, action_low=low, action_high=high)
    a = np.array([[-2.0, 0.0, -3.0], [0.0, 5.0, -1.0], [2.0, 10.0, 1.0], [1.0, 2.5, 0.0]])
    expected = np.array([[-1, -1, -1], [0, 0, 0], [1, 1, 1], [0.5, -0.5, 0.5]], np.float32)
    scaled = scale_actions(a, stats)
    assert scaled.dtype == np.float32
    np.testing.assert_allclose(scaled, expected, atol=1e-7)
    np.testing.assert_allclose(to_env_action(scaled, stats), a, atol=1e-6)
    # the head never says more than 1, but clip anyway: the env only takes its own range
    np.testing.assert_allclose(to_env_action(np.array([[1.5, -1.2, 0.0]]), stats), [[2, 0, -1]])
    # no bounds (actions used as they are, or discrete): returned untouched
    plain = StateStats(np.zeros(5), np.ones(5), 7)
    ints = np.array([3, 17])
    assert to_env_action(ints, plain) is ints and to_env_action(ints, None) is ints
    np.testing.assert_array_equal(scale_actions(a, None), a.astype(np.float32))


def test_with_action_bounds_makes_identity_state_stats_only_when_needed():
    bounds = (np.array([-2.0]), np.array([2.0]))
    assert with_action_bounds(None, None, 3) is None
    carried = with_action_bounds(None, bounds, 3)
    assert carried is not None and not carried.normalizes_states
    x = np.array([[1.0, -4.0, 8.0]])
    np.testing.assert_array_equal(normalize_states(x, carried), x)  # the identity
    norm = StateStats(mean=np.ones(3), std=np.full(3, 2.0), count=9)
    both = with_action_bounds(norm, bounds, 3)
    assert both is not None and both.normalizes_states and both.bounds is not None
    check_action_bounds(both, bounds, "d")
    with pytest.raises(DataError, match="scale actions from"):
        check_action_bounds(both, (np.array([-1.0]), np.array([3.0])), "d")
    with pytest.raises(DataError, match=r"as they are"):
        check_action_bounds(norm, bounds, "d")


def test_state_stats_with_action_bounds_save_and_load(tmp_path):
    stats = StateStats(
        mean=np.zeros(3), std=np.ones(3), count=0,
        action_low=np.array([-2.0, 0.0]), action_high=np.array([2.0, 4.0]),
    )  # fmt: skip
    path = tmp_path / "stats.json"
    save_state_stats(stats, path)
    back = load_state_stats(path)
    assert back.count == 0 and back.bounds is not None
    np.testing.assert_array_equal(back.bounds[0], [-2.0, 0.0])
    np.testing.assert_array_equal(back.bounds[1], [2.0, 4.0])
    bad = tmp_path / "bounds.json"
    bad.write_text('{"mean": [0], "std": [1], "count": 0, "action_low": [3], "action_high": [1]}')
    with pytest.raises(DataError, match=r"bounds\.json: action_low"):
        load_state_stats(bad)
