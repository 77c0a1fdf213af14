"""``DecisionTransformer.forward_step`` (the last block only at the predicting tokens of one
step per window) against the full forward, and DTPolicy, which uses it, against the same
policy run on the full forward: for DT-Mem (both addressings, slot and channel erase) and
plain DT, discrete and continuous, windows shorter than K and full sliding windows."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import pytest
import torch

from dtmem.config.model import MemoryConfig, ModelConfig
from dtmem.dt_policy import DTPolicy
from dtmem.envs import EnvSpec, VectorStep
from dtmem.model import DecisionTransformer, DTOutput, build_model
from dtmem.model.memory import DenseMemory, FactoredMemory
from dtmem.rollout import rollout

MEMORIES = {
    "previous": MemoryConfig(slots=13, width=12, heads=2),
    "initial": MemoryConfig(slots=13, width=12, heads=2, addressing="initial"),
    "channel": MemoryConfig(slots=13, width=12, heads=2, erase="channel"),
    "plain": None,
}


@pytest.fixture(autouse=True)
def one_thread() -> Iterator[None]:
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def _model(memory: str, kind: str, context: int, encoder: str = "vector") -> DecisionTransformer:
    torch.manual_seed(0)
    cfg = ModelConfig(
        encoder=encoder,
        obs_dim=5,
        action_kind="discrete" if kind != "continuous" else "continuous",
        num_actions=7,
        act_dim=3,
        returns="atari_bins" if kind == "atari" else "continuous",
        return_scale=10.0,
        context=context,
        n_layer=3,
        n_head=2,
        d_model=22,
        dropout=0.1,
        max_timestep=40,
        memory=MEMORIES[memory],
    )
    model = build_model(cfg).eval()
    with torch.no_grad():  # sharper heads: argmax actions that change from step to step
        model.action_head.weight.mul_(50.0)
    return model


Window = tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]


def _window(model: DecisionTransformer, B: int, K: int, n_obs: int = 1) -> Window:
    """Random encoded observations (B, K, n_obs, d) and the rest of a window."""
    spec, g = model.spec, torch.Generator().manual_seed(1)
    tokens = torch.randn(B, K, n_obs, 22, generator=g)
    if spec.return_bins:
        rtg = torch.randint(0, spec.return_bins, (B, K), generator=g)
        rew = torch.randint(0, 4, (B, K), generator=g)
    else:
        rtg, rew = torch.randn(B, K, generator=g), torch.randn(B, K, generator=g)
    if spec.action_kind == "discrete":
        act = torch.randint(0, spec.num_actions, (B, K), generator=g)
    else:
        act = torch.rand(B, K, spec.act_dim, generator=g) * 2 - 1
    return tokens, rtg, act, rew, torch.randint(0, 40, (B, K), generator=g)


def _at(out: DTOutput, step: torch.Tensor) -> DTOutput:
    """The full forward's predictions at step[b] of window b, as a K = 1 output."""
    b = torch.arange(len(step))

    def pick(t: torch.Tensor | None) -> torch.Tensor | None:
        return None if t is None else t[b, step].unsqueeze(1)

    action = pick(out.action)
    assert action is not None
    return DTOutput(action, pick(out.return_logits), pick(out.reward_logits), out.memory)


def _assert_same(got: DTOutput, want: DTOutput) -> None:
    torch.testing.assert_close(got.action, want.action, atol=1e-5, rtol=1e-5)
    for g, w in ((got.return_logits, want.return_logits), (got.reward_logits, want.reward_logits)):
        assert (g is None) == (w is None)
        if g is not None:
            torch.testing.assert_close(g, w, atol=1e-5, rtol=1e-5)
    assert len(got.memory) == len(want.memory)
    for s, r in zip(got.memory, want.memory, strict=True):
        if isinstance(s, FactoredMemory):
            assert isinstance(r, FactoredMemory)
            torch.testing.assert_close(s.rows, r.rows)
            torch.testing.assert_close(s.decay, r.decay)
        else:
            assert isinstance(s, DenseMemory) and isinstance(r, DenseMemory)
            torch.testing.assert_close(s.memory, r.memory)


@pytest.mark.parametrize("memory", list(MEMORIES))
@pytest.mark.parametrize("kind", ["continuous", "discrete", "atari"])
@pytest.mark.parametrize(("K", "context"), [(6, 9), (9, 9)])  # shorter than K, full
def test_forward_step_is_the_full_forward_at_that_step(memory, kind, K, context):
    model = _model(memory, kind, context)
    inputs = _window(model, 5, K)
    step = torch.tensor([0, K - 1, 2, K - 2, 3])  # each row its own step; later ones padding
    with torch.no_grad():
        got = model.forward_step(*inputs, step)
        want = model.forward_tokens(*inputs)
    assert got.action.shape[:2] == (5, 1)
    _assert_same(got, _at(want, step))
    # the predictions do depend on the step (a wrong index would not go unnoticed)
    assert not torch.allclose(want.action[:, 0], want.action[:, K - 1], atol=1e-3)


def test_forward_step_with_many_observation_tokens():
    """The patch encoder: 36 observation tokens a step, so the three predicting tokens of
    a step are far from the step's first token."""
    model = _model("previous", "atari", 4, encoder="patch")
    n_obs = model.n_obs_tokens
    assert n_obs > 1
    inputs = _window(model, 3, 4, n_obs)
    step = torch.tensor([3, 0, 2])
    with torch.no_grad():
        _assert_same(model.forward_step(*inputs, step), _at(model.forward_tokens(*inputs), step))


class ZigzagEnv:
    """A fake VectorEnv, discrete or continuous, vector observations of 5: an episode with
    seed s lasts 4 + 3 * (s % 5) steps (shorter and longer than the windows), reward s % 3
    a step; observations from the seed, the step and the last action."""

    def __init__(self, num_envs: int, continuous: bool):
        self._n, self.continuous = num_envs, continuous
        self.seed = np.zeros(num_envs, dtype=np.int64)
        self.t = np.zeros(num_envs, dtype=np.int64)
        self.last = np.zeros(num_envs)

    @property
    def spec(self) -> EnvSpec:
        if self.continuous:
            return EnvSpec("zigzag", (5,), "continuous", 0, 3, None)
        return EnvSpec("zigzag", (5,), "discrete", 7, 0, None)

    @property
    def num_envs(self) -> int:
        return self._n

    def _obs(self, i: int) -> np.ndarray:
        s, t = float(self.seed[i]), float(self.t[i])
        return np.array([s / 7, t / 9, np.sin(s + t), np.cos(2 * t), self.last[i]], np.float32)

    def reset(self, seeds):
        self.seed[:], self.t[:], self.last[:] = seeds, 0, 0.0
        return np.stack([self._obs(i) for i in range(self._n)])

    def reset_at(self, index, seed):
        self.seed[index] = 99 if seed is None else seed  # an idle env after its episodes
        self.t[index], self.last[index] = 0, 0.0
        return self._obs(index)

    def step(self, actions):
        a = np.asarray(actions, dtype=np.float64).reshape(self._n, -1)
        self.last = a[:, 0] / (1.0 if self.continuous else 7.0)
        self.t += 1
        return VectorStep(
            observations=np.stack([self._obs(i) for i in range(self._n)]),
            rewards=(self.seed % 3).astype(np.float64),
            terminated=self.t >= 4 + 3 * (self.seed % 5),
            truncated=np.zeros(self._n, dtype=bool),
            success=None,
        )

    def close(self) -> None:
        pass


def _run(model: DecisionTransformer, continuous: bool, target: float | None) -> list:
    """Actions of every episode of a rollout: 3 envs, 7 episodes (so envs go idle)."""
    env = ZigzagEnv(3, continuous)
    policy = DTPolicy(model, env, greedy=True, seed=3)
    taken: list[np.ndarray] = []
    act = policy.act

    def recording_act(observations, active):
        actions = act(observations, active)
        taken.append(actions[active].copy())
        return actions

    policy.act = recording_act  # type: ignore[method-assign]
    rollout(policy, env, target, num_episodes=7, seed=1)
    return taken


@pytest.mark.parametrize("memory", list(MEMORIES))
@pytest.mark.parametrize("kind", ["continuous", "discrete", "atari"])
def test_policy_acts_as_on_the_full_forward(memory, kind, monkeypatch):
    """DTPolicy's actions equal those it takes when ``forward_step`` is replaced by the full
    window's forward indexed at the step; and every call it makes agrees with that forward."""
    model = _model(memory, kind, context=6)
    target = None if kind == "atari" else 5.0
    fast = model.forward_step
    checked: list[int] = []

    def checking(*inputs: torch.Tensor, keep: bool = False) -> DTOutput:
        window, step = inputs[:5], inputs[5]
        got = fast(*inputs, keep=keep)
        _assert_same(got, _at(model.forward_tokens(*window), step))
        checked.append(int(step.max()))
        return got

    monkeypatch.setattr(model, "forward_step", checking)
    got = _run(model, kind == "continuous", target)
    assert max(checked) == 5 and min(checked) == 0  # short windows, then full sliding ones

    full = lambda *a, keep=False: _at(model.forward_tokens(*a[:5]), a[5])  # noqa: E731
    monkeypatch.setattr(model, "forward_step", full)  # no cache: two full forwards
    want = _run(model, kind == "continuous", target)
    assert len(got) == len(want) > 20
    for g, w in zip(got, want, strict=True):
        np.testing.assert_allclose(g, w, atol=1e-5)
    assert len(np.unique(np.round(np.concatenate(want), 3))) > 2  # the actions vary


@pytest.mark.parametrize("memory", ["previous", "initial", "plain"])
@pytest.mark.parametrize("encoder", ["vector", "patch"])
def test_return_token_alone_is_the_forward_with_the_new_return(memory, encoder):
    """Expert-return sampling changes only the return at the predicted step: the action from
    that one token through the blocks (``forward_return_token``) equals ``forward_step`` on the
    changed windows; with the channel erase there is no cache to use."""
    model = _model(memory, "atari", 9, encoder=encoder)
    n_obs = model.n_obs_tokens
    inputs = _window(model, 5, 9, n_obs)
    step = torch.tensor([0, 8, 2, 7, 3])
    rtg, ts = inputs[1].clone(), inputs[4]
    b = torch.arange(5)
    rtg[b, step] = (rtg[b, step] + 17) % model.spec.return_bins  # a new return at each step
    with torch.no_grad():
        first = model.forward_step(*inputs, step, keep=True)
        assert first.cache is not None
        got = model.forward_return_token(first.cache, rtg[b, step], ts[b, step])
        want = model.forward_step(inputs[0], rtg, *inputs[2:], step)
    torch.testing.assert_close(got.action, want.action, atol=1e-5, rtol=1e-5)
    assert not torch.allclose(got.action, first.action, atol=1e-3)  # the return matters
    assert (
        _model("channel", "atari", 9).forward_step(*_window(model, 2, 9), step[:2], keep=True).cache
        is None
    )
