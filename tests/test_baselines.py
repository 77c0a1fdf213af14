"""The 1-nearest-neighbour baseline on hand-made data: exact search against a float64 loop,
standardisation, the fine-tune's episode subset, and a run in the real episode loop."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from numpy.typing import ArrayLike

from dtmem.baselines import (
    NearestNeighbourPolicy,
    demonstrations_from_config,
    fit_demonstrations,
    nearest,
)
from dtmem.data.episodes import Episode
from dtmem.envs import EnvSpec, VectorStep
from dtmem.rollout import EpisodeStart, run_episodes


def _episode(states: ArrayLike, actions: ArrayLike) -> Episode:
    """An episode with T = len(actions) steps and T + 1 states."""
    acts = np.asarray(actions)
    T = len(acts)
    return Episode(
        observations=np.asarray(states, dtype=np.float32),
        actions=acts,
        rewards=np.zeros(T, np.float32),
        terminations=np.r_[np.zeros(T - 1, bool), True],
        truncations=np.zeros(T, bool),
    )


def _loop_nearest(queries: np.ndarray, keys: np.ndarray) -> np.ndarray:
    """The reference: for each query, the first key at the smallest float64 distance."""
    out = []
    for q in queries.astype(np.float64):
        d = np.sqrt(((keys.astype(np.float64) - q) ** 2).sum(axis=1))
        out.append(int(np.flatnonzero(d == d.min())[0]))
    return np.array(out)


@pytest.mark.parametrize(
    ("n", "m", "d", "chunk"), [(13, 1001, 7, 97), (1, 5, 3, 16384), (6, 64, 17, 64)]
)
def test_nearest_matches_a_float64_loop(n, m, d, chunk):
    rng = np.random.default_rng(n * m)
    keys = rng.integers(-20, 20, size=(m, d)).astype(np.float32)  # exact in float32: no noise
    queries = keys[rng.integers(0, m, n)] + rng.uniform(-0.3, 0.3, (n, d)).astype(np.float32)
    got = nearest(torch.from_numpy(queries), torch.from_numpy(keys), chunk=chunk).numpy()
    np.testing.assert_array_equal(got, _loop_nearest(queries, keys))


def test_ties_go_to_the_earliest_key_across_chunks():
    keys = torch.tensor([[5.0, 5.0], [1.0, 0.0], [9.0, 9.0], [1.0, 0.0], [1.0, 0.0]])
    got = nearest(torch.tensor([[1.0, 0.0], [0.9, 0.0]]), keys, chunk=2)
    assert got.tolist() == [1, 1]
    with pytest.raises(ValueError, match="no keys"):
        nearest(torch.zeros(1, 2), torch.zeros(0, 2))


def test_exact_far_from_the_origin():
    # Keys differ by 1 at 2e3 from the origin: the matrix-multiply form of the distance
    # (|q|^2 - 2 q.k + |k|^2 in float32) cancels away the difference; the exact form does not.
    base = np.full((50, 8), 2000.0, dtype=np.float32)
    base[:, 0] += np.arange(50, dtype=np.float32)
    queries = base[[3, 17, 41]] + np.float32(0.2)
    got = nearest(torch.from_numpy(queries), torch.from_numpy(base)).numpy()
    assert got.tolist() == [3, 17, 41]


def test_fit_pairs_each_state_with_its_action_and_standardises():
    ep1 = _episode([[0, 10], [1, 20], [2, 30]], [[0.1], [0.2]])
    ep2 = _episode([[3, 40], [4, 50]], [[0.3]])
    demos = fit_demonstrations([ep1, ep2])
    raw = np.array([[0, 10], [1, 20], [3, 40]], dtype=np.float64)  # the last states drop out
    np.testing.assert_allclose(demos.stats.mean, raw.mean(axis=0))
    np.testing.assert_allclose(demos.states, (raw - raw.mean(0)) / raw.std(0), rtol=1e-6)
    np.testing.assert_allclose(demos.actions, [[0.1], [0.2], [0.3]])
    assert demos.actions.dtype == np.float32 and demos.obs_dim == 2
    discrete = fit_demonstrations([_episode([[0.0], [1.0], [2.0]], np.array([2, 1]))])
    assert discrete.actions.dtype == np.int64 and discrete.actions.tolist() == [2, 1]
    with pytest.raises(ValueError, match="no demonstrations"):
        fit_demonstrations([])


class LineEnv:
    """A fake VectorEnv: x starts at seed % 3 and moves by the action (clipped to [-1, 1]);
    success and termination at x >= 6. Observation (x,)."""

    goal = 6.0

    def __init__(self, num_envs: int) -> None:
        self.x = np.zeros(num_envs)

    @property
    def spec(self) -> EnvSpec:
        return EnvSpec("line", (1,), "continuous", 0, 1, 50)

    @property
    def num_envs(self) -> int:
        return len(self.x)

    def _obs(self) -> np.ndarray:
        return self.x[:, None].astype(np.float32)

    def reset(self, seeds):
        self.x = np.array([s % 3 for s in seeds], dtype=np.float64)
        return self._obs()

    def reset_at(self, index, seed):
        self.x[index] = 0.0 if seed is None else seed % 3
        return self._obs()[index]

    def step(self, actions):
        self.x += np.clip(np.asarray(actions)[:, 0], -1, 1)
        done = self.x >= self.goal
        n = self.num_envs
        return VectorStep(self._obs(), np.where(done, 1.0, 0.0), done, np.zeros(n, bool), done)

    def close(self) -> None:
        pass


def _line_demos():
    """Expert: +1 at x = 0..5; a decoy far away (x = 20..25) plays -1."""
    expert = _episode(np.arange(7.0)[:, None], np.ones((6, 1)))
    decoy = _episode(np.arange(20.0, 27.0)[:, None], -np.ones((6, 1)))
    return fit_demonstrations([expert, decoy])


def test_policy_plays_the_nearest_demonstrated_action():
    env = LineEnv(4)
    policy = NearestNeighbourPolicy(_line_demos(), env)
    obs = env.reset([0, 1, 2, 0])
    obs[3] = 23.4  # an inactive row: its answer is ignored by the loop
    acts = policy.act(obs, np.array([True, True, True, False]))
    assert acts.shape == (4, 1) and acts.dtype == np.float32
    np.testing.assert_array_equal(acts[:3, 0], [1.0, 1.0, 1.0])
    assert policy.act(np.array([[23.4]], np.float32), np.array([True]))[0, 0] == -1.0


def test_distances_are_between_standardised_states():
    # Demonstrated A = (0, 0) -> +1 and B = (1, 1000) -> -1; std per dimension (0.5, 500).
    # Query (0.9, 400): raw distances 400 to A, 600 to B; standardised 1.97 to A, 1.22 to B.
    demos = fit_demonstrations([_episode([[0, 0], [1, 1000], [0, 0]], [[1.0], [-1.0]])])

    class Plane(LineEnv):
        @property
        def spec(self) -> EnvSpec:
            return EnvSpec("plane", (2,), "continuous", 0, 1, 50)

    policy = NearestNeighbourPolicy(demos, Plane(1))
    assert policy.act(np.array([[0.9, 400.0]], np.float32), np.ones(1, bool))[0, 0] == -1.0
    assert policy.act(np.array([[0.9, 100.0]], np.float32), np.ones(1, bool))[0, 0] == 1.0


def test_policy_solves_the_line_in_the_episode_loop():
    env = LineEnv(3)
    policy = NearestNeighbourPolicy(_line_demos(), env)
    starts = [EpisodeStart(seed, None) for seed in range(7)]  # more episodes than envs
    stats = run_episodes(policy, env, starts, max_steps=50)
    assert [s.success for s in stats] == [True] * 7
    assert [s.length for s in stats] == [6 - seed % 3 for seed in range(7)]


def test_policy_refuses_an_env_it_does_not_fit():
    demos = _line_demos()

    class Wide(LineEnv):
        @property
        def spec(self) -> EnvSpec:
            return EnvSpec("wide", (3,), "continuous", 0, 1, 50)

    class Discrete(LineEnv):
        @property
        def spec(self) -> EnvSpec:
            return EnvSpec("discrete", (1,), "discrete", 4, 0, 50)

    with pytest.raises(ValueError, match="wide: observations"):
        NearestNeighbourPolicy(demos, Wide(1))
    with pytest.raises(ValueError, match="discrete: discrete actions"):
        NearestNeighbourPolicy(demos, Discrete(1))


def test_demonstrations_are_the_fine_tunes_episode_subset(tmp_path):
    from dtmem.config.data import DataConfig
    from dtmem.data.sources import build_sources
    from dtmem.data.synthetic import write_metaworld_like

    write_metaworld_like(tmp_path, "demo/hammer-v0", "hammer-v3", episodes=6, steps=9, seed=2)
    cfg = DataConfig.model_validate(
        {"datasets": [{"id": "demo/hammer-v0"}], "root": str(tmp_path), "episode_fraction": 0.5}
    )
    demos = demonstrations_from_config(cfg)
    (source,) = build_sources(cfg)
    assert source.episode_ids.size == 3
    assert demos.states.shape == (3 * 9, 39) and demos.actions.shape == (3 * 9, 4)
    # The synthetic actions are a function of the state: a demonstrated state gets its own.
    ep = source.reader.read_episode(int(source.episode_ids[1]))

    class Env(LineEnv):
        @property
        def spec(self) -> EnvSpec:
            return EnvSpec("hammer-v3", (39,), "continuous", 0, 4, 500)

    policy = NearestNeighbourPolicy(demos, Env(5))
    acts = policy.act(ep.observations[:5], np.ones(5, bool))
    np.testing.assert_allclose(acts, ep.actions[:5], atol=1e-6)
