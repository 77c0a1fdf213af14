"""``DTPolicy``: a Decision Transformer acting in a vector env, with MDT's conditioning. No Ray.

Timing convention: at step t the policy sees s_t and the K-1 steps before it, and picks a_t;
the env answers with r_t and s_{t+1}. The model's window for step t holds steps
t-K+1 .. t exactly as a training window does (dtmem/batch.py): right-padded while the episode
is shorter than K, the action and reward slots of step t holding 0 (the model never reads
a_t or r_t to predict a_t), and every window starting again from the model's initial memory.

Return conditioning, per env:

- A fixed target (Meta-World): R_t = target - (r_0 + .. + r_{t-1}), fed as R_t /
  ``model.spec.return_scale``. With MDT's return bins (an Atari model given a number), R_t
  counts sign(r) as MDT's returns do and is fed as its bin.
- ``target=None``, MDT's expert-return sampling (Atari): the return head at step t (read at
  the last observation token, so it does not see R_t) gives logits over the 120 return bins;
  ``num_return_samples`` (128) candidates are drawn from softmax(logits * 0.75), MDT's
  ``return_temperature=0.75``, which *multiplies* the logits (a true temperature of 1/0.75);
  candidates below R_{t-1} - sign(r_{t-1}) (the previous condition less what was just
  earned) are dropped, the largest remaining one is taken per env (the authors' port takes
  one maximum across all envs: a bug), and the previous value is kept if none remains.
  The window is then run again with R_t in place to read the action.
- Actions (discrete): MDT samples at ``action_inverse_temperature=1.0`` from the logits
  strictly above their 50th percentile (the rest set to -inf); ``greedy=True`` takes the
  argmax instead (and the most likely return bin). Continuous actions are the tanh output.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from dtmem.data.windows import StateStats, normalize_states, to_env_action
from dtmem.envs import EnvSpec, VectorEnv
from dtmem.mdt_sampling import return_bins, reward_classes, sample_action, sample_expert_return
from dtmem.model import DecisionTransformer, DTOutput, ModelSpec

__all__ = [
    "DTPolicy",
    "IncompatibleModelError",
    "InvalidTargetError",
    "check_compatible",
    "check_state_stats",
    "check_target",
    "preprocess",
]


class InvalidTargetError(ValueError):
    """A target return that cannot condition this model (NaN, infinite, or missing)."""


class IncompatibleModelError(ValueError):
    """A model whose observation or action space does not fit the env."""


def check_target(target: float | None) -> None:
    if target is not None and not math.isfinite(target):
        raise InvalidTargetError(f"target return must be a finite number or None, got {target}")


def check_compatible(model_spec: ModelSpec, env_spec: EnvSpec) -> None:
    """Raise IncompatibleModelError unless the model's observation and action spaces fit."""
    name = env_spec.name
    if tuple(model_spec.obs_shape) != tuple(env_spec.observation_shape):
        raise IncompatibleModelError(
            f"{name}: model observations {tuple(model_spec.obs_shape)} but the env gives "
            f"{tuple(env_spec.observation_shape)}"
        )
    if model_spec.action_kind != env_spec.action_kind:
        raise IncompatibleModelError(
            f"{name}: model has {model_spec.action_kind} actions, the env {env_spec.action_kind}"
        )
    if env_spec.action_kind == "discrete" and model_spec.num_actions != env_spec.num_actions:
        raise IncompatibleModelError(
            f"{name}: model has {model_spec.num_actions} actions, the env {env_spec.num_actions}"
        )
    if env_spec.action_kind == "continuous" and model_spec.act_dim != env_spec.act_dim:
        raise IncompatibleModelError(
            f"{name}: model actions have {model_spec.act_dim} dims, the env's {env_spec.act_dim}"
        )


def check_state_stats(state_stats: StateStats | None, env_spec: EnvSpec) -> None:
    """State statistics must be for vector observations of the env's width."""
    if state_stats is None:
        return
    if len(env_spec.observation_shape) != 1:
        raise IncompatibleModelError(
            f"{env_spec.name}: state statistics apply to vector observations, not "
            f"{env_spec.observation_shape} frames"
        )
    if state_stats.mean.shape != env_spec.observation_shape:
        raise IncompatibleModelError(
            f"{env_spec.name}: state statistics of width {state_stats.mean.shape[0]}, "
            f"observations of {env_spec.observation_shape[0]}"
        )


def preprocess(observations: np.ndarray, state_stats: StateStats | None) -> np.ndarray:
    """Observations as training windows hold them: vector states standardised with the
    training data's statistics when it used them (dtmem.data.windows.normalize_states),
    Atari frames untouched (uint8; the model divides by 255)."""
    if state_stats is None:
        return observations
    return normalize_states(observations, state_stats)


class DTPolicy:
    """A Decision Transformer acting in ``env.num_envs`` envs at once.

    Keeps, per env, the last K steps as the model's inputs: observation *tokens* (each frame
    is encoded once, when it arrives, with ``model.encode_observations``), return-to-go,
    action, reward and timestep. Each ``act`` encodes only the new observations and runs
    ``model.forward_step`` once on the windows of all active envs together; it computes only
    the predictions of each window's newest step. With expert-return sampling the return head
    comes first, then the action for the sampled return: ``model.forward_return_token`` runs
    only that changed token through the blocks, against what the first call kept. ``state_stats``:
    the training data's state statistics when it standardised vector states (None: raw).
    Puts the model in eval mode.
    """

    def __init__(
        self,
        model: DecisionTransformer,
        env: VectorEnv,
        *,
        greedy: bool = False,
        seed: int = 0,
        state_stats: StateStats | None = None,
        num_return_samples: int = 128,
        return_inverse_temperature: float = 0.75,
        action_inverse_temperature: float = 1.0,
        action_top_percentile: float = 50.0,
    ) -> None:
        spec = model.spec
        check_compatible(spec, env.spec)
        check_state_stats(state_stats, env.spec)
        self.state_stats = state_stats
        self.model = model.eval()
        self.spec = spec
        self.greedy = greedy
        self.num_return_samples = num_return_samples
        self.return_inverse_temperature = return_inverse_temperature
        self.action_inverse_temperature = action_inverse_temperature
        self.action_top_percentile = action_top_percentile
        self.device = next(model.parameters()).device
        self.generator = torch.Generator(device=self.device).manual_seed(seed)

        N, K = env.num_envs, spec.context
        self.bins = spec.return_bins > 0
        discrete = spec.action_kind == "discrete"

        def zeros(shape: tuple[int, ...], dtype: torch.dtype = torch.float32) -> torch.Tensor:
            return torch.zeros(shape, dtype=dtype, device=self.device)

        self.obs_tokens: torch.Tensor | None = None  # (N, K, n_obs, d), allocated on first use
        self.returns_to_go = zeros((N, K), torch.long if self.bins else torch.float32)
        self.actions = zeros((N, K), torch.long) if discrete else zeros((N, K, spec.act_dim))
        self.rewards = zeros((N, K), torch.long if self.bins else torch.float32)
        self.timesteps = zeros((N, K), torch.long)
        self.length = np.zeros(N, dtype=np.int64)  # steps in each env's window, <= K
        self.t = np.zeros(N, dtype=np.int64)  # episode step of each env's next observation
        self.remaining = np.zeros(N)  # fixed target: the return still to collect
        self.expert = np.zeros(N, dtype=bool)  # expert-return sampling instead of a target
        self.floor = np.full(N, -1, dtype=np.int64)  # expert: lowest bin allowed next step
        self._rows = np.zeros(0, dtype=np.int64)  # envs of the last act ...
        self._pos = np.zeros(0, dtype=np.int64)  # ... and the window slot of their step

    @torch.inference_mode()
    def reset(self, index: int, target: float | None) -> None:
        check_target(target)
        if target is None and not self.bins:
            raise InvalidTargetError(
                "this model has no return head: give a target return (target=None samples "
                "an expert return, which needs an Atari model with return bins)"
            )
        self.length[index] = 0
        self.t[index] = 0
        self.expert[index] = target is None
        self.remaining[index] = 0.0 if target is None else target
        self.floor[index] = -1
        for buf in self._buffers():
            buf[index].zero_()

    def _buffers(self) -> list[torch.Tensor]:
        bufs = [self.returns_to_go, self.actions, self.rewards, self.timesteps]
        return bufs if self.obs_tokens is None else [self.obs_tokens, *bufs]

    @torch.inference_mode()  # no autograd bookkeeping at all: 3-8% of a small forward
    def act(self, observations: np.ndarray, active: np.ndarray) -> np.ndarray:
        rows = np.flatnonzero(active)
        K = self.spec.context
        # Slide full windows left by one step to make room.
        full = rows[self.length[rows] == K]
        if full.size:
            f = torch.as_tensor(full, device=self.device)
            for buf in self._buffers():
                buf[f, :-1] = buf[f, 1:]  # advanced indexing copies the right-hand side
            self.length[full] -= 1
        pos = self.length[rows].copy()  # window slot of step t, per active env
        self.length[rows] += 1

        r = torch.as_tensor(rows, device=self.device)
        p = torch.as_tensor(pos, device=self.device)
        new = preprocess(np.asarray(observations)[rows], self.state_stats)
        obs = torch.as_tensor(new, device=self.device)
        tokens = self.model.encode_observations(obs.unsqueeze(1))[:, 0]  # (B, n_obs, d)
        if self.obs_tokens is None:
            self.obs_tokens = tokens.new_zeros((len(self.length), K, *tokens.shape[1:]))
        self.obs_tokens[r, p] = tokens
        self.timesteps[r, p] = torch.as_tensor(self.t[rows], device=self.device)
        self.actions[r, p] = 0
        self.rewards[r, p] = 0

        expert = self.expert[rows]
        self.returns_to_go[r, p] = self._fixed_condition(rows).to(self.returns_to_go.dtype)
        L = int(self.length[rows].max())  # the longest window among them; the rest is padding
        if expert.any():
            out = self._forward(r, p, L, keep=True)
            assert out.return_logits is not None
            floor = torch.as_tensor(self.floor[rows], device=self.device)
            sampled = sample_expert_return(
                out.return_logits[:, 0],
                floor,
                num_samples=self.num_return_samples,
                inverse_temperature=self.return_inverse_temperature,
                greedy=self.greedy,
                generator=self.generator,
            )
            e = torch.as_tensor(expert, device=self.device)
            self.returns_to_go[r, p] = torch.where(e, sampled, self.returns_to_go[r, p])
            if out.cache is not None:  # only the return token changed: run that token only
                out = self.model.forward_return_token(
                    out.cache, self.returns_to_go[r, p], self.timesteps[r, p]
                )
            else:
                out = self._forward(r, p, L)
        else:
            out = self._forward(r, p, L)
        logits = out.action[:, 0]  # (B, A) logits or (B, act_dim)
        if self.spec.action_kind == "discrete":
            chosen = sample_action(
                logits,
                top_percentile=self.action_top_percentile,
                inverse_temperature=self.action_inverse_temperature,
                greedy=self.greedy,
                generator=self.generator,
            )
        else:
            chosen = logits
        self.actions[r, p] = chosen.to(self.actions.dtype)
        self._rows, self._pos = rows, pos

        chosen_np = to_env_action(chosen.cpu().numpy(), self.state_stats)  # the env's range
        actions = np.zeros((len(self.length), *chosen_np.shape[1:]), dtype=chosen_np.dtype)
        actions[rows] = chosen_np
        return actions

    def _fixed_condition(self, rows: np.ndarray) -> torch.Tensor:
        """The model input for a fixed target: the remaining return, scaled or binned."""
        remaining = torch.as_tensor(self.remaining[rows], device=self.device)
        if self.bins:
            return return_bins(remaining, self.spec.return_min, self.spec.return_bins)
        return (remaining / self.spec.return_scale).float()

    def _forward(self, r: torch.Tensor, p: torch.Tensor, L: int, keep: bool = False) -> DTOutput:
        """The model's predictions for step p (B,) of rows ``r`` of the context, from its
        first L steps (B, L, ...): ``forward_step``, the full window's predictions there up to
        float rounding (steps after p are padding, which the causal model never reads for
        step p)."""
        assert self.obs_tokens is not None
        if len(r) == len(self.length):  # every env active: views, no gather
            return self.model.forward_step(
                self.obs_tokens[:, :L],
                self.returns_to_go[:, :L],
                self.actions[:, :L],
                self.rewards[:, :L],
                self.timesteps[:, :L],
                p,
                keep=keep,
            )
        return self.model.forward_step(
            self.obs_tokens[r, :L],
            self.returns_to_go[r, :L],
            self.actions[r, :L],
            self.rewards[r, :L],
            self.timesteps[r, :L],
            p,
            keep=keep,
        )

    @torch.inference_mode()  # the buffers are updated in inference mode only
    def observe(self, rewards: np.ndarray) -> None:
        rows, pos = self._rows, self._pos
        raw = np.asarray(rewards, dtype=np.float64)[rows]
        r = torch.as_tensor(rows, device=self.device)
        p = torch.as_tensor(pos, device=self.device)
        raw_t = torch.as_tensor(raw, device=self.device)
        if self.bins:
            self.rewards[r, p] = reward_classes(raw_t)
            earned = np.sign(raw)  # MDT's returns count reward events
            condition = self.returns_to_go[r, p].cpu().numpy()
            self.floor[rows] = np.where(
                self.expert[rows], np.clip(condition - earned, 0, self.spec.return_bins - 1), -1
            )
        else:
            self.rewards[r, p] = raw_t.float()
            earned = raw
        self.remaining[rows] -= earned
        self.t[rows] += 1
