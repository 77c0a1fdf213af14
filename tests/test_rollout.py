"""The rollout: MDT's sampling rules, exact episode counts, and the batched, cached DTPolicy
against two oracles (naive_rollout, and the model's training-time prediction on a window
built by hand in dtmem/batch.py's format)."""

from __future__ import annotations

import math
from collections.abc import Iterator

import numpy as np
import pytest
import torch

from dtmem.batch import Batch
from dtmem.config.model import MemoryConfig, ModelConfig
from dtmem.data.windows import StateStats, normalize_states
from dtmem.dt_policy import DTPolicy, IncompatibleModelError, InvalidTargetError
from dtmem.envs import EnvSpec, VectorStep
from dtmem.envs.atari import make_atari_env
from dtmem.envs.metaworld import make_metaworld_env
from dtmem.mdt_sampling import return_bins, reward_classes, sample_action, sample_expert_return
from dtmem.model import build_model
from dtmem.naive_rollout import naive_rollout
from dtmem.rollout import EpisodeStart, FunctionPolicy, rollout, run_episodes


@pytest.fixture(autouse=True)
def one_thread() -> Iterator[None]:
    # Tiny models on a shared 2-core machine: intra-op threads only add contention.
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def _stats(seed: int = 0, width: int = 39) -> StateStats:
    rng = np.random.default_rng(seed)
    return StateStats(mean=rng.normal(0, 0.3, width), std=rng.uniform(0.2, 2.0, width), count=9)


def _meta_model(context: int = 7, act_dim: int = 4):
    torch.manual_seed(0)
    cfg = ModelConfig(
        encoder="vector",
        obs_dim=39,
        act_dim=act_dim,
        return_scale=50.0,
        context=context,
        n_layer=2,
        n_head=2,
        d_model=22,
        dropout=0.1,
        max_timestep=23,
        memory=MemoryConfig(slots=17, heads=1),
    )
    return build_model(cfg)


def _atari_model(context: int = 5, num_actions: int = 18, sharpness: float = 200.0):
    torch.manual_seed(0)
    cfg = ModelConfig(
        encoder="conv",
        action_kind="discrete",
        num_actions=num_actions,
        returns="atari_bins",
        context=context,
        n_layer=2,
        n_head=2,
        d_model=22,
        dropout=0.1,
        max_timestep=29,
        memory=MemoryConfig(slots=17),
    )
    model = build_model(cfg)
    with torch.no_grad():  # sharper heads, so that argmax actions and returns vary by step
        model.action_head.weight.mul_(sharpness)
        assert model.return_head is not None
        model.return_head.weight.mul_(sharpness)
    return model


class Recorder:
    """Wraps a VectorEnv and records, per env, what the policy saw and did."""

    def __init__(self, env):
        self.env = env
        n = env.num_envs
        self.obs: list[list[np.ndarray]] = [[] for _ in range(n)]
        self.actions: list[list[np.ndarray]] = [[] for _ in range(n)]
        self.rewards: list[list[float]] = [[] for _ in range(n)]
        self._last: np.ndarray | None = None

    @property
    def spec(self) -> EnvSpec:
        return self.env.spec

    @property
    def num_envs(self) -> int:
        return self.env.num_envs

    def reset(self, seeds):
        self._last = self.env.reset(seeds).copy()
        return self._last

    def reset_at(self, index, seed):
        obs = self.env.reset_at(index, seed)
        assert self._last is not None
        self._last[index] = obs
        return obs

    def step(self, actions):
        assert self._last is not None
        step = self.env.step(actions)
        for i in range(self.num_envs):
            self.obs[i].append(self._last[i].copy())
            self.actions[i].append(np.array(actions[i]))
            self.rewards[i].append(float(step.rewards[i]))
        self._last = step.observations.copy()
        return step

    def close(self):
        self.env.close()


# --- MDT's sampling rules -------------------------------------------------------------


def test_return_bins_and_reward_classes():
    got = return_bins(torch.tensor([-25.0, -20.0, 0.0, 3.4, 99.0, 100.0, 250.0]), -20, 120)
    assert got.tolist() == [0, 0, 20, 23, 119, 119, 119]
    assert reward_classes(torch.tensor([0.0, 2.0, -0.5, 1.0])).tolist() == [0, 1, 3, 1]


def test_expert_return_takes_the_maximum_per_env():
    logits = torch.full((3, 120), -1e9)
    logits[0, 10] = logits[1, 50] = logits[2, 30] = 0.0  # one sure bin per env
    floor = torch.tensor([-1, -1, 70])
    g = torch.Generator().manual_seed(0)
    got = sample_expert_return(
        logits, floor, num_samples=128, inverse_temperature=0.75, greedy=False, generator=g
    )
    assert got.tolist() == [10, 50, 70]  # not one max (50) for all; the floor wins in env 2


def test_expert_return_is_the_max_of_the_samples():
    logits = torch.zeros(2, 120)  # uniform: the max of 128 draws sits near the top
    g = torch.Generator().manual_seed(0)
    got = sample_expert_return(
        logits, torch.tensor([-1, -1]), num_samples=128, inverse_temperature=0.75, greedy=False,
        generator=g,
    )  # fmt: skip
    assert (got >= 100).all()
    one = sample_expert_return(
        logits, torch.tensor([-1, -1]), num_samples=1, inverse_temperature=0.75, greedy=True,
        generator=g,
    )  # fmt: skip
    assert one.tolist() == [0, 0]  # greedy: the argmax (first of ties), not a sample


def test_return_temperature_multiplies_the_logits():
    # Two bins with logits 0 and log 3: MDT's 0.75 gives P(bin 1) = 3^0.75 / (1 + 3^0.75)
    # = 0.695; dividing by 0.75 instead would give 0.812.
    logits = torch.full((20000, 120), -1e9)
    logits[:, 0], logits[:, 1] = 0.0, math.log(3.0)
    g = torch.Generator().manual_seed(0)
    got = sample_expert_return(
        logits, torch.full((20000,), -1), num_samples=1, inverse_temperature=0.75,
        greedy=False, generator=g,
    )  # fmt: skip
    p = got.float().mean().item()
    assert p == pytest.approx(3**0.75 / (1 + 3**0.75), abs=0.015)


def test_action_sampling_keeps_logits_above_the_median():
    logits = torch.tensor([[0.0, 1.0, 2.0, 3.0, 4.0]]).repeat(4000, 1)  # median 2: keep 3, 4
    g = torch.Generator().manual_seed(0)
    got = sample_action(
        logits, top_percentile=50.0, inverse_temperature=1.0, greedy=False, generator=g
    )
    assert set(got.tolist()) == {3, 4}
    assert (got == 4).float().mean().item() == pytest.approx(math.e / (1 + math.e), abs=0.03)
    eighteen = torch.randn(1, 18, generator=g).repeat(3000, 1)
    got18 = sample_action(
        eighteen, top_percentile=50.0, inverse_temperature=1.0, greedy=False, generator=g
    )
    assert set(got18.tolist()) == set(eighteen[0].argsort()[9:].tolist())  # the top 9 of 18
    greedy = sample_action(
        logits[:2], top_percentile=50.0, inverse_temperature=1.0, greedy=True, generator=g
    )
    assert greedy.tolist() == [4, 4]


def test_action_sampling_all_tied_does_not_fail():
    g = torch.Generator().manual_seed(0)
    got = sample_action(
        torch.zeros(500, 5), top_percentile=50.0, inverse_temperature=1.0, greedy=False,
        generator=g,
    )  # fmt: skip
    assert set(got.tolist()) == {0, 1, 2, 3, 4}


# --- exactly the requested episodes, on a fake env --------------------------------------


class CountdownEnv:
    """A fake VectorEnv: an episode with seed s lasts 2 + s % 5 steps, reward 1 a step,
    'success' on its third step; observation = (seed, step)."""

    def __init__(self, num_envs: int):
        self._n = num_envs
        self.seed = np.zeros(num_envs, dtype=np.int64)
        self.t = np.zeros(num_envs, dtype=np.int64)
        self.steps_while_done = 0

    @property
    def spec(self) -> EnvSpec:
        return EnvSpec("countdown", (2,), "discrete", 3, 0, None)

    @property
    def num_envs(self) -> int:
        return self._n

    def _obs(self, i: int) -> np.ndarray:
        return np.array([self.seed[i], self.t[i]], dtype=np.float32)

    def reset(self, seeds):
        self.seed[:] = seeds
        self.t[:] = 0
        return np.stack([self._obs(i) for i in range(self._n)])

    def reset_at(self, index, seed):
        self.seed[index], self.t[index] = (99 if seed is None else seed), 0
        return self._obs(index)

    def step(self, actions):
        over = self.t >= 2 + self.seed % 5
        self.steps_while_done += int(over.sum())
        self.t += 1
        done = self.t >= 2 + self.seed % 5
        return VectorStep(
            observations=np.stack([self._obs(i) for i in range(self._n)]),
            rewards=np.ones(self._n),
            terminated=done,
            truncated=np.zeros(self._n, dtype=bool),
            success=self.t == 3,
        )

    def close(self):
        pass


class SpyPolicy(FunctionPolicy):
    def __init__(self):
        super().__init__(lambda obs: np.array(0))
        self.active_counts: list[int] = []
        self.targets: list[float | None] = []

    def reset(self, index, target):
        super().reset(index, target)
        self.targets.append(target)

    def act(self, observations, active):
        self.active_counts.append(int(active.sum()))
        return super().act(observations, active)


@pytest.mark.parametrize(("num_envs", "num_episodes"), [(3, 7), (4, 2), (1, 3), (5, 5)])
def test_rollout_runs_exactly_the_requested_episodes(num_envs, num_episodes):
    env, policy = CountdownEnv(num_envs), SpyPolicy()
    stats = rollout(policy, env, 12.0, num_episodes=num_episodes, seed=10)
    assert [s.episode for s in stats] == list(range(num_episodes))
    assert [s.seed for s in stats] == [10 + e for e in range(num_episodes)]
    for s in stats:
        assert s.length == 2 + s.seed % 5 == s.episode_return
        assert s.success == (s.length >= 3) and not s.truncated
    assert policy.targets == [12.0] * num_episodes  # one reset per episode, no more
    # Active envs never exceed the episodes still running.
    assert max(policy.active_counts) == min(num_envs, num_episodes)
    assert env.steps_while_done == 0  # every finished env was reset before its next step


def test_slots_are_reset_idle_only_while_the_env_steps_on():
    """A slot with no episode left is reset (so it can be stepped) only if other slots still
    run; after the last step nothing is reset (a Meta-World reset costs ~27 ms)."""

    class Counting(CountdownEnv):
        idle_resets = 0

        def reset_at(self, index, seed):
            self.idle_resets += seed is None
            return super().reset_at(index, seed)

    env = Counting(5)
    stats = rollout(SpyPolicy(), env, 1.0, num_episodes=5, seed=10)  # lengths 2, 3, 4, 5, 6
    assert [s.length for s in stats] == [2, 3, 4, 5, 6]
    assert env.idle_resets == 4 and env.steps_while_done == 0
    same = Counting(3)
    starts = [EpisodeStart(seed, 1.0) for seed in (15, 20, 25)]  # all three end on step 2
    assert [s.length for s in run_episodes(SpyPolicy(), same, starts)] == [2, 2, 2]
    assert same.idle_resets == 0


def test_rollout_max_steps_truncates():
    stats = rollout(FunctionPolicy(lambda o: np.array(0)), CountdownEnv(2), 1.0,
                    num_episodes=4, seed=3, max_steps=4)  # fmt: skip
    assert [(s.length, s.truncated) for s in stats] == [
        (4, True),
        (4, True),
        (2, False),
        (3, False),
    ]


def test_rollout_expert_on_metaworld_records_success():
    env = make_metaworld_env("reach-v3", 2, seed=0)
    from dtmem.envs.metaworld import expert_policy

    stats = rollout(FunctionPolicy(expert_policy("reach-v3")), env, 0.0, num_episodes=3)
    env.close()
    assert [s.success for s in stats] == [True, True, True]
    assert all(s.length == 500 and s.truncated and s.episode_return > 1000 for s in stats)


# --- the batched DTPolicy against the oracles -----------------------------------------


def _episodes(rec: Recorder, stats, num_envs: int) -> list[list[np.ndarray]]:
    """Actions per episode from a batched run where episode e ran on env e (e < num_envs)."""
    return [rec.actions[s.episode][: s.length] for s in stats if s.episode < num_envs]


def test_dtpolicy_matches_naive_rollout_metaworld():
    model = _meta_model(context=7)
    batched = Recorder(make_metaworld_env("reach-v3", 3, seed=0))
    policy = DTPolicy(model, batched, greedy=True, state_stats=_stats())
    stats = rollout(policy, batched, 300.0, num_episodes=3, seed=5, max_steps=11)
    single = Recorder(make_metaworld_env("reach-v3", 1, seed=0))
    ref = naive_rollout(
        model, single, 300.0, num_episodes=3, seed=5, max_steps=11, state_stats=_stats()
    )
    for s, r in zip(stats, ref, strict=True):
        assert (s.length, s.seed) == (r.length, r.seed) == (11, 5 + s.episode)
        assert s.episode_return == pytest.approx(r.episode_return, rel=1e-5)
    ref_actions = np.array(single.actions[0]).reshape(3, 11, 4)
    for e, acts in enumerate(_episodes(batched, stats, 3)):
        np.testing.assert_allclose(np.array(acts), ref_actions[e], atol=1e-5)
    assert np.abs(np.diff(ref_actions, axis=1)).max() > 1e-3  # the actions do change


def test_dtpolicy_matches_naive_rollout_atari_expert_returns():
    model = _atari_model(context=5)
    batched = Recorder(make_atari_env("Pong", 3, num_threads=1))
    stats = rollout(DTPolicy(model, batched, greedy=True), batched, None, num_episodes=3,
                    seed=2, max_steps=12)  # fmt: skip
    single = Recorder(make_atari_env("Pong", 1, num_threads=1))
    ref = naive_rollout(model, single, None, num_episodes=3, seed=2, max_steps=12, greedy=True)
    assert [(s.length, s.truncated) for s in stats] == [(r.length, r.truncated) for r in ref]
    ref_actions = np.array(single.actions[0]).reshape(3, 12)
    got = np.array(_episodes(batched, stats, 3))
    np.testing.assert_array_equal(got, ref_actions)
    assert len(np.unique(ref_actions)) > 2  # not a constant policy


class FakeAtariEnv(CountdownEnv):
    """CountdownEnv with Atari frames (random, from seed and step) and rewards +1, 0, -1, +3
    in turn, so that expert returns have floors to respect."""

    @property
    def spec(self) -> EnvSpec:
        return EnvSpec("fake-atari", (4, 84, 84), "discrete", 18, 0, None)

    def _obs(self, i: int) -> np.ndarray:
        rng = np.random.default_rng(int(self.seed[i]) * 1000 + int(self.t[i]))
        return rng.integers(0, 256, size=(4, 84, 84), dtype=np.uint8)

    def step(self, actions):
        step = super().step(actions)
        rewards = np.array([1.0, 0.0, -1.0, 3.0])[(self.t - 1) % 4]
        return VectorStep(step.observations, rewards, step.terminated, step.truncated, None)


def test_dtpolicy_matches_naive_rollout_with_rewards_and_floors():
    model = _atari_model(context=3)
    batched = Recorder(FakeAtariEnv(3))
    policy = DTPolicy(model, batched, greedy=True)
    stats = rollout(policy, batched, None, num_episodes=5, seed=7)
    single = Recorder(FakeAtariEnv(1))
    ref = naive_rollout(model, single, None, num_episodes=5, seed=7, greedy=True)
    assert [(s.length, s.episode_return) for s in stats] == [
        (r.length, r.episode_return) for r in ref
    ]
    ref_actions = [int(a) for a in single.actions[0]]
    start = np.cumsum([0] + [r.length for r in ref])
    for s, r in zip(stats[:3], ref[:3], strict=True):  # episodes 0-2 ran on envs 0-2 first
        got = [int(a) for a in batched.actions[s.episode][: s.length]]
        assert got == ref_actions[start[r.episode] : start[r.episode] + r.length]
    assert max(s.length for s in stats) > 3  # windows slid


def test_dtpolicy_sampling_is_seeded():
    model = _atari_model(context=5, sharpness=1.0)
    env = make_atari_env("Pong", 2, num_threads=1)
    runs = []
    for seed in (0, 0, 1):
        rec = Recorder(env)
        rollout(DTPolicy(model, rec, seed=seed), rec, None, num_episodes=2, max_steps=9)
        runs.append(np.array(rec.actions[0]))
    env.close()
    np.testing.assert_array_equal(runs[0], runs[1])
    assert not np.array_equal(runs[0], runs[2])


def test_dtpolicy_encodes_each_frame_once():
    model = _meta_model(context=4)
    shapes: list[tuple[int, ...]] = []
    encode = model.encode_observations

    def spy(obs: torch.Tensor) -> torch.Tensor:
        shapes.append(tuple(obs.shape))
        return encode(obs)

    model.encode_observations = spy
    env = make_metaworld_env("reach-v3", 3, seed=0)
    rollout(DTPolicy(model, env), env, 10.0, num_episodes=4, max_steps=6)
    env.close()
    assert shapes[0] == (3, 1, 39)  # all envs, one new frame each
    assert all(s[1] == 1 for s in shapes)
    assert sum(s[0] for s in shapes) == 4 * 6  # one encoding per agent step, no more


def _window(rec: Recorder, env_index: int, t: int, K: int, rtg: list, model_rewards: list):
    """Steps t-K+1 .. t of env ``env_index``'s first episode as a dtmem.batch.Batch (B=1)."""
    lo = max(0, t - K + 1)
    obs = torch.as_tensor(np.stack(rec.obs[env_index][lo : t + 1]))[None]
    acts = np.stack(rec.actions[env_index][lo : t + 1])
    acts[-1] = 0  # the action slot of the current step holds 0 at evaluation
    rew = list(model_rewards[lo : t + 1])
    rew[-1] = 0
    L = t + 1 - lo
    return Batch(
        observations=obs,
        actions=torch.as_tensor(acts)[None],
        returns_to_go=torch.as_tensor(np.array(rtg[lo : t + 1]))[None],
        rewards=torch.as_tensor(np.array(rew))[None],
        timesteps=torch.arange(lo, t + 1)[None],
        mask=torch.ones(1, L, dtype=torch.bool),
        task_id=torch.zeros(1, dtype=torch.long),
    )


def test_dtpolicy_action_is_the_training_time_prediction_metaworld():
    K, target, scale = 5, 120.0, 50.0
    model = _meta_model(context=K)
    rec = Recorder(make_metaworld_env("reach-v3", 3, seed=0))
    stats = _stats(seed=2)
    rollout(DTPolicy(model, rec, state_stats=stats), rec, target, num_episodes=3, seed=1,
            max_steps=9)  # fmt: skip
    rec.obs = [[normalize_states(o, stats) for o in env_obs] for env_obs in rec.obs]
    env_index, t = 1, 8  # a window that has slid: steps 4..8
    rewards = rec.rewards[env_index]
    rtg = [np.float32((target - sum(rewards[:s])) / scale) for s in range(t + 1)]
    batch = _window(rec, env_index, t, K, rtg, [np.float32(r) for r in rewards])
    assert batch.observations.shape == (1, K, 39) and batch.timesteps[0, 0] == t - K + 1
    model.eval()
    with torch.no_grad():
        out = model(batch.observations, batch.returns_to_go, batch.actions.float(),
                    batch.rewards, batch.timesteps)  # fmt: skip
    np.testing.assert_allclose(out.action[0, -1].numpy(), rec.actions[env_index][t], atol=1e-5)


def test_dtpolicy_window_is_the_training_window_atari_target():
    K, target = 3, 7.0
    model = _atari_model(context=K)
    rec = Recorder(FakeAtariEnv(2))  # rewards +1, 0, -1, +3: every reward class appears
    policy = DTPolicy(model, rec, greedy=True)
    stats = rollout(policy, rec, target, num_episodes=2, seed=4)
    env_index, t = 0, stats[0].length - 1  # seed 4: 6 steps, the last one is t = 5
    assert t == 5
    rewards = rec.rewards[env_index]
    earned = np.cumsum([0.0, *np.sign(rewards)])
    rtg = [int(np.clip(round(target - earned[s]) + 20, 0, 119)) for s in range(t + 1)]
    classes = [int(reward_classes(torch.tensor(r))) for r in rewards]
    assert set(classes) == {0, 1, 3}
    batch = _window(rec, env_index, t, K, rtg, classes)
    assert batch.observations.dtype == torch.uint8 and batch.observations.shape[1:] == (
        K,
        4,
        84,
        84,
    )
    # The policy's context for env 0 is this window (its last step's action and reward slots
    # were filled after acting).
    torch.testing.assert_close(policy.returns_to_go[env_index], batch.returns_to_go[0])
    torch.testing.assert_close(policy.timesteps[env_index], batch.timesteps[0])
    torch.testing.assert_close(policy.rewards[env_index, :-1], batch.rewards[0, :-1])
    torch.testing.assert_close(policy.actions[env_index, :-1], batch.actions[0, :-1])
    model.eval()
    with torch.no_grad():
        out = model(batch.observations, batch.returns_to_go, batch.actions, batch.rewards,
                    batch.timesteps)  # fmt: skip
    assert int(out.action[0, -1].argmax()) == int(rec.actions[env_index][t])


# --- bad input --------------------------------------------------------------------------


@pytest.mark.parametrize("target", [float("nan"), float("inf")])
def test_non_finite_target_is_refused(target):
    env = CountdownEnv(2)
    with pytest.raises(InvalidTargetError, match="finite") as err:
        rollout(FunctionPolicy(lambda o: np.array(0)), env, target, num_episodes=2)
    assert isinstance(err.value, ValueError)


def test_target_none_needs_a_return_head():
    env = make_metaworld_env("reach-v3", 1, seed=0)
    model = _meta_model()
    with pytest.raises(InvalidTargetError, match="return head"):
        rollout(DTPolicy(model, env), env, None, num_episodes=1)
    with pytest.raises(InvalidTargetError, match="return head"):
        naive_rollout(model, env, None, num_episodes=1)
    env.close()


def test_model_that_does_not_fit_the_env_is_refused():
    meta = make_metaworld_env("reach-v3", 1, seed=0)
    atari = make_atari_env("Pong", 1, num_threads=1)
    try:
        with pytest.raises(IncompatibleModelError, match="observations"):
            DTPolicy(_atari_model(), meta)
        with pytest.raises(IncompatibleModelError, match="observations"):
            DTPolicy(_meta_model(), atari)
        with pytest.raises(IncompatibleModelError, match="5 actions"):
            DTPolicy(_atari_model(num_actions=5), atari)
        with pytest.raises(IncompatibleModelError, match="3 dims"):
            naive_rollout(_meta_model(act_dim=3), meta, 1.0, num_episodes=1)
        with pytest.raises(IncompatibleModelError, match="width 17"):
            DTPolicy(_meta_model(), meta, state_stats=_stats(width=17))
        with pytest.raises(IncompatibleModelError, match="vector observations"):
            DTPolicy(_atari_model(), atari, state_stats=_stats())
        assert issubclass(IncompatibleModelError, ValueError)
    finally:
        meta.close()
        atari.close()
