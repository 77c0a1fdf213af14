"""Decision Transformer with working memory (DT-Mem), and the plain DT from the same blocks.

Each step of the window becomes ``n_tok`` tokens, in MDT's order::

    [obs_1 .. obs_n]  R  a  (r)        n_tok = n_obs + 2, +1 with the Atari reward token

and each block is (pre-LayerNorm, residual everywhere)::

    x = x + CausalSelfAttention(LN1(x))
    x = x + WorkingMemory(LN_m(x), state)      # write, then read (absent in a plain DT)
    x = x + MLP(LN2(x))

Predictions are read where their inputs are visible and their targets are not: the action at
the return token (it sees obs_t and R_t, never a_t), the return distribution at the last
observation token (it sees obs_t, not R_t), the reward at the action token. Every window
starts from the learned initial memory M_0, in training and in evaluation alike.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

# MDT's return discretisation: integer returns in [RETURN_MIN, RETURN_MIN + RETURN_BINS).
from dtmem.mdt_bins import RETURN_BINS, RETURN_MIN
from dtmem.model.encoders import ConvEncoder, PatchEncoder, VectorEncoder
from dtmem.model.memory import MemoryState, MemoryStep, WorkingMemory
from dtmem.model.memory_spec import MemorySpec

# MDT's reward classes: 0 none, 1 positive, 3 negative (2 unused).
REWARD_CLASSES = 4


@dataclass(frozen=True)
class ModelSpec:
    """What a consumer of the model (training, rollout) must know about its inputs."""

    encoder: Literal["vector", "conv", "patch"]
    obs_shape: tuple[int, ...]
    action_kind: Literal["discrete", "continuous"]
    num_actions: int  # discrete actions (0 when continuous)
    act_dim: int  # continuous action size (0 when discrete)
    context: int  # K
    tokens_per_step: int
    return_bins: int  # 120 with Atari heads, else 0
    return_min: int  # the return that bin 0 stands for
    return_scale: float  # continuous return-to-go is divided by it before the model
    has_memory: bool


@dataclass(frozen=True)
class DTOutput:
    """Predictions per step of the window (K = 1 from ``forward_step``: one step per window).

    action:        (B, K, num_actions) logits, or (B, K, act_dim) in [-1, 1]
    return_logits: (B, K, 120) or None (no Atari heads)
    reward_logits: (B, K, 4) or None
    memory:        each block's memory state after the window (empty for a plain DT)
    cache:         from ``forward_step(keep=True)``: what ``forward_return_token`` needs
    """

    action: torch.Tensor
    return_logits: torch.Tensor | None
    reward_logits: torch.Tensor | None
    memory: tuple[MemoryState, ...]
    cache: StepCache | None = None


@dataclass(frozen=True)
class StepCache:
    """What ``forward_step`` computed that a new return at its step leaves unchanged: per
    block, the attention's keys and values (B, n_head, L, hs) and the memory's record of the
    window (None in a plain DT); ``step`` (B,), the step it predicted for."""

    keys: tuple[torch.Tensor, ...]
    values: tuple[torch.Tensor, ...]
    memory: tuple[MemoryStep | None, ...]
    step: torch.Tensor


class CausalSelfAttention(nn.Module):
    def __init__(self, d_model: int, n_head: int, dropout: float) -> None:
        super().__init__()
        self.n_head, self.dropout = n_head, dropout
        self.qkv = nn.Linear(d_model, 3 * d_model)
        self.proj = nn.Linear(d_model, d_model)
        self.resid_drop = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_kv(x)[0]

    def forward_kv(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """As ``forward``, with the keys and values (B, nh, T, hs)."""
        B, T, C = x.size()
        q, k, v = self._split_qkv(x)
        drop = self.dropout if self.training else 0.0
        y = F.scaled_dot_product_attention(q, k, v, dropout_p=drop, is_causal=True)
        y = y.transpose(1, 2).contiguous().view(B, T, C)  # (B, T, C)
        return self.resid_drop(self.proj(y)), k, v

    def attend_one(
        self, x: torch.Tensor, keys: torch.Tensor, values: torch.Tensor, at: torch.Tensor
    ) -> torch.Tensor:
        """One token per sample, x (B, 1, C), at index ``at`` (B,) of a sequence whose other
        keys and values (B, nh, L, hs) are known: the attention output there (B, 1, C)."""
        B, _, C = x.size()
        q, k, v = self._split_qkv(x)
        rows = torch.arange(B, device=x.device)
        keys, values = keys.clone(), values.clone()
        keys[rows, :, at], values[rows, :, at] = k[:, :, 0], v[:, :, 0]
        seen = torch.arange(keys.shape[2], device=x.device) <= at[:, None]  # causal, (B, L)
        y = F.scaled_dot_product_attention(q, keys, values, attn_mask=seen[:, None, None, :])
        return self.resid_drop(self.proj(y.transpose(1, 2).reshape(B, 1, C)))

    def _split_qkv(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """x (B, T, C) -> q, k, v, each (B, nh, T, hs)."""
        B, T, C = x.size()
        q, k, v = (
            t.view(B, T, self.n_head, C // self.n_head).transpose(1, 2)
            for t in self.qkv(x).split(C, dim=2)
        )
        return q, k, v


class MLP(nn.Module):
    """GPT-2 MLP: Linear(d, 4d), GELU, Linear(4d, d)."""

    def __init__(self, d_model: int, dropout: float) -> None:
        super().__init__()
        self.fc = nn.Linear(d_model, 4 * d_model)
        self.proj = nn.Linear(4 * d_model, d_model)
        self.drop = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.drop(self.proj(F.gelu(self.fc(x))))


class Block(nn.Module):
    """Attend, then (with memory) write and read, then the MLP: think before you act."""

    def __init__(self, d_model: int, n_head: int, dropout: float, memory: WorkingMemory | None):
        super().__init__()
        self.ln_1 = nn.LayerNorm(d_model)
        self.attn = CausalSelfAttention(d_model, n_head, dropout)
        self.ln_m = nn.LayerNorm(d_model) if memory is not None else None
        self.memory = memory
        self.ln_2 = nn.LayerNorm(d_model)
        self.mlp = MLP(d_model, dropout)

    def forward(
        self, x: torch.Tensor, state: MemoryState | None, at: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, MemoryState | None]:
        x, step, _ = self.step(x, state, at, record=False)
        return x, step.state if step is not None else None

    def step(
        self,
        x: torch.Tensor,
        state: MemoryState | None,
        at: torch.Tensor | None = None,
        record: bool = True,
    ) -> tuple[torch.Tensor, MemoryStep | None, tuple[torch.Tensor, torch.Tensor]]:
        """As ``forward``, with the memory's whole record (its addressing) kept, the read
        addressing only if ``record``, and the attention's keys and values (B, nh, L, hs),
        which ``return_token`` reads.

        ``at`` (B, q), token indices per sample: the output only at those tokens, (B, q, d).
        Attention and the memory's writes still see every token (keys, values and step
        summaries); the memory read and the MLP run only for ``at``.
        """
        a, k, v = self.attn.forward_kv(self.ln_1(x))
        x = x + a
        step = None
        if self.memory is not None and self.ln_m is not None and state is not None:
            step = self.memory.step(self.ln_m(x), state, at, record)
        if at is not None:
            x = x.gather(1, at.unsqueeze(-1).expand(-1, -1, x.shape[-1]))  # (B, q, d)
        if step is not None:
            x = x + step.out
        x = x + self.mlp(self.ln_2(x))
        return x, step, (k, v)

    def return_token(
        self,
        x: torch.Tensor,
        keys: torch.Tensor,
        values: torch.Tensor,
        memory: MemoryStep | None,
        at: torch.Tensor,
        steps: torch.Tensor,
    ) -> torch.Tensor:
        """One token per sample, x (B, 1, d), at index ``at`` of step ``steps`` (B,), when no
        earlier token changed since ``step`` gave ``keys``, ``values`` and ``memory``."""
        x = x + self.attn.attend_one(self.ln_1(x), keys, values, at)
        if self.memory is not None and self.ln_m is not None and memory is not None:
            x = x + self.memory.read_at(self.ln_m(x), memory, steps)
        return x + self.mlp(self.ln_2(x))


class DecisionTransformer(nn.Module):
    """DT-Mem when ``memory`` is given, else a plain Decision Transformer.

    Args (flat, so that the module never sees a config object):
        encoder: "vector", "conv" or "patch".
        obs_dim: vector observation size ("vector" only).
        action_kind / num_actions / act_dim: the action space.
        atari_heads: MDT's return bins (input and head), reward token and reward head.
        return_scale: recorded in ``spec`` for consumers; inputs arrive already scaled.
        context: K, the longest window.
        n_layer / n_head / d_model / dropout: the transformer.
        max_timestep: size of an episode-timestep embedding (0: none).
        memory: the working memory in every block (None: a plain DT).
    """

    def __init__(
        self,
        *,
        encoder: Literal["vector", "conv", "patch"],
        obs_dim: int,
        action_kind: Literal["discrete", "continuous"],
        num_actions: int,
        act_dim: int,
        atari_heads: bool,
        return_scale: float,
        context: int,
        n_layer: int,
        n_head: int,
        d_model: int,
        dropout: float,
        max_timestep: int,
        memory: MemorySpec | None,
    ) -> None:
        super().__init__()
        if encoder == "vector":
            self.encoder: nn.Module = VectorEncoder(obs_dim, d_model)
        elif encoder == "conv":
            self.encoder = ConvEncoder(d_model)
        elif encoder == "patch":
            self.encoder = PatchEncoder(d_model)
        else:
            raise ValueError(f"unknown encoder {encoder!r}: expected vector, conv or patch")
        n_obs = int(self.encoder.n_tokens)
        n_tok = n_obs + 2 + (1 if atari_heads else 0)
        self.n_obs_tokens = n_obs
        self.spec = ModelSpec(
            encoder=encoder,
            obs_shape=tuple(self.encoder.obs_shape),
            action_kind=action_kind,
            num_actions=num_actions if action_kind == "discrete" else 0,
            act_dim=act_dim if action_kind == "continuous" else 0,
            context=context,
            tokens_per_step=n_tok,
            return_bins=RETURN_BINS if atari_heads else 0,
            return_min=RETURN_MIN,
            return_scale=return_scale,
            has_memory=memory is not None,
        )

        # Token embeddings.
        if atari_heads:
            self.embed_return: nn.Module = nn.Embedding(RETURN_BINS, d_model)
            self.embed_reward: nn.Module | None = nn.Embedding(REWARD_CLASSES, d_model)
        else:
            self.embed_return = nn.Linear(1, d_model)
            self.embed_reward = None
        if action_kind == "discrete":
            self.embed_action: nn.Module = nn.Embedding(num_actions, d_model)
        else:
            self.embed_action = nn.Linear(act_dim, d_model)
        self.pos_emb = nn.Parameter(torch.zeros(context * n_tok, d_model))  # learned positions
        self.embed_timestep = nn.Embedding(max_timestep, d_model) if max_timestep > 0 else None
        self.drop = nn.Dropout(dropout)

        self.blocks = nn.ModuleList(
            Block(
                d_model,
                n_head,
                dropout,
                WorkingMemory(d_model, memory, tokens_per_step=n_tok, context=context)
                if memory is not None
                else None,
            )
            for _ in range(n_layer)
        )
        self.ln_f = nn.LayerNorm(d_model)
        # forward_step's tokens within a step: the return token (action head), then with
        # Atari heads the last observation token (return head) and the action token (reward)
        heads_at = [n_obs, n_obs - 1, n_obs + 1] if atari_heads else [n_obs]
        self.head_tokens: torch.Tensor
        self.register_buffer("head_tokens", torch.tensor(heads_at), persistent=False)

        # Heads.
        out_dim = num_actions if action_kind == "discrete" else act_dim
        self.action_head = nn.Linear(d_model, out_dim)
        self.return_head = nn.Linear(d_model, RETURN_BINS) if atari_heads else None
        self.reward_head = nn.Linear(d_model, REWARD_CLASSES) if atari_heads else None

        self.apply(self._init_weights)
        nn.init.normal_(self.pos_emb, std=0.02)
        for name, p in self.named_parameters():  # GPT-2: scaled init of residual projections
            if name.endswith("attn.proj.weight") or name.endswith("mlp.proj.weight"):
                nn.init.normal_(p, mean=0.0, std=0.02 / (2 * n_layer) ** 0.5)

    @staticmethod
    def _init_weights(module: nn.Module) -> None:
        if isinstance(module, nn.Linear):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)

    def encode_observations(self, observations: torch.Tensor) -> torch.Tensor:
        """(B, K, *obs_shape) -> (B, K, n_obs, d). Per step, so a rollout may cache it."""
        return self.encoder(observations)

    def forward(
        self,
        observations: torch.Tensor,
        returns_to_go: torch.Tensor,
        actions: torch.Tensor,
        rewards: torch.Tensor,
        timesteps: torch.Tensor,
    ) -> DTOutput:
        """A window of K <= context steps (formats in dtmem/batch.py) -> predictions per step."""
        obs_tokens = self.encode_observations(observations)
        return self.forward_tokens(obs_tokens, returns_to_go, actions, rewards, timesteps)

    def forward_tokens(
        self,
        obs_tokens: torch.Tensor,
        returns_to_go: torch.Tensor,
        actions: torch.Tensor,
        rewards: torch.Tensor,
        timesteps: torch.Tensor,
    ) -> DTOutput:
        """As ``forward``, from already encoded observations (B, K, n_obs, d)."""
        B, K, n_obs, d = obs_tokens.shape
        x = self.embed_tokens(obs_tokens, returns_to_go, actions, rewards, timesteps)
        x, states, _ = self._blocks(x, None)
        x = self.ln_f(x).view(B, K, -1, d)  # (B, K, n_tok, d)
        return self._heads(x[:, :, n_obs], x[:, :, n_obs - 1], x[:, :, n_obs + 1], states)

    def forward_step(
        self,
        obs_tokens: torch.Tensor,
        returns_to_go: torch.Tensor,
        actions: torch.Tensor,
        rewards: torch.Tensor,
        timesteps: torch.Tensor,
        step: torch.Tensor,
        keep: bool = False,
    ) -> DTOutput:
        """The predictions of one step per window, ``step`` (B,) (window b's step step[b]):
        ``forward_tokens(...)`` at those steps, as a DTOutput with K = 1 (the memory states are
        the full window's).

        The same computation (equal up to float rounding, as tests/test_policy_last_token.py
        checks), and cheaper: the last block needs every token's keys, values and step summaries,
        but its memory read, MLP, ``ln_f`` and the heads run only at the step's predicting
        tokens (the return token, with Atari heads the last observation and action tokens
        too). This is what a rollout needs: the action of the newest step of each window.
        ``keep``: the output's ``cache`` holds what ``forward_return_token`` needs (None where
        the memory cannot be read again from its record: ``erase="channel"``).
        """
        n_tok = self.spec.tokens_per_step
        at = step.unsqueeze(1) * n_tok + self.head_tokens  # (B, 1 or 3) token indices
        x = self.embed_tokens(obs_tokens, returns_to_go, actions, rewards, timesteps)
        x, states, cache = self._blocks(x, at, step if keep else None)
        x = self.ln_f(x)  # (B, 1 or 3, d): return token, [last obs token, action token]
        if len(self.head_tokens) == 1:
            out = self._heads(x, None, None, states)
        else:
            out = self._heads(x[:, :1], x[:, 1:2], x[:, 2:3], states)
        return replace(out, cache=cache)

    def forward_return_token(
        self, cache: StepCache, returns_to_go: torch.Tensor, timesteps: torch.Tensor
    ) -> DTOutput:
        """The action at each window's step ``cache.step`` after only that step's return
        changed, as ``forward_step`` on the changed windows gives it (up to float rounding):
        ``returns_to_go`` and ``timesteps`` (B,) of that step. Expert-return sampling predicts
        the return, samples one, then the action: no token before the return token changed,
        so each block runs for that one token, against the keys, values and memory writes
        ``forward_step(keep=True)`` kept. Returns the action only (K = 1)."""
        at = cache.step * self.spec.tokens_per_step + self.n_obs_tokens  # the return tokens
        x = self._embed_returns(returns_to_go, self.pos_emb.dtype)
        if self.embed_timestep is not None:
            x = x + self._embed_timesteps(timesteps)
        x = self.drop(x + self.pos_emb[at]).unsqueeze(1)  # (B, 1, d)
        for block, k, v, memory in zip(
            self.blocks, cache.keys, cache.values, cache.memory, strict=True
        ):
            assert isinstance(block, Block)
            x = block.return_token(x, k, v, memory, at, cache.step)
        states = tuple(m.state for m in cache.memory if m is not None)
        return self._heads(self.ln_f(x), None, None, states, action_only=True)

    def _blocks(
        self, x: torch.Tensor, at: torch.Tensor | None, keep_for: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, tuple[MemoryState, ...], StepCache | None]:
        """The blocks on x (B, L, d), each from the initial memory; the last one only at
        ``at`` (B, q) when given. -> (B, L or q, d), each block's memory state, and with
        ``keep_for`` (the step predicted, (B,)) the ``StepCache`` (None for a memory that
        ``read_at`` cannot read again)."""
        B = x.shape[0]
        states: list[MemoryState] = []
        keys, values, records = [], [], []
        last = len(self.blocks) - 1
        for i, block in enumerate(self.blocks):
            assert isinstance(block, Block)
            state = block.memory.initial_state(B) if block.memory is not None else None
            x, step, (k, v) = block.step(x, state, at if i == last else None, record=False)
            keys.append(k)
            values.append(v)
            records.append(step)
            if step is not None:
                states.append(step.state)
        cache = None
        if keep_for is not None and all(s is None or s.decays is not None for s in records):
            cache = StepCache(tuple(keys), tuple(values), tuple(records), keep_for)
        return x, tuple(states), cache

    def _heads(
        self,
        at_return: torch.Tensor,
        at_last_obs: torch.Tensor | None,
        at_action: torch.Tensor | None,
        states: tuple[MemoryState, ...],
        action_only: bool = False,
    ) -> DTOutput:
        """The heads on the final tokens (B, T, d) where each prediction is read."""
        action = self.action_head(at_return)  # at the return token
        if self.spec.action_kind == "continuous":
            action = torch.tanh(action)
        return_logits = reward_logits = None
        if action_only:
            return DTOutput(action, None, None, states)
        if self.return_head is not None and self.reward_head is not None:
            assert at_last_obs is not None and at_action is not None
            return_logits = self.return_head(at_last_obs)  # sees obs_t, not R_t
            reward_logits = self.reward_head(at_action)  # sees a_t, not r_t
        return DTOutput(action, return_logits, reward_logits, states)

    def embed_tokens(
        self,
        obs_tokens: torch.Tensor,
        returns_to_go: torch.Tensor,
        actions: torch.Tensor,
        rewards: torch.Tensor,
        timesteps: torch.Tensor,
    ) -> torch.Tensor:
        """Encoded observations (B, K, n_obs, d) and the rest of the window -> the blocks'
        input (B, L, d), L = K * n_tok, in MDT's token order, with positions."""
        B, K, _, d = obs_tokens.shape
        spec = self.spec
        if spec.context < K:
            raise ValueError(f"window of {K} steps is longer than the context {spec.context}")
        ret = self._embed_returns(returns_to_go, obs_tokens.dtype)  # (B, K, d)
        if spec.action_kind == "discrete":
            act = self.embed_action(actions.long())  # (B, K, d)
        else:
            act = self.embed_action(actions.to(obs_tokens.dtype))
        parts = [obs_tokens, ret.unsqueeze(2), act.unsqueeze(2)]
        if self.embed_reward is not None:
            parts.append(self.embed_reward(rewards.long()).unsqueeze(2))
        x = torch.cat(parts, dim=2)  # (B, K, n_tok, d)
        if self.embed_timestep is not None:
            x = x + self._embed_timesteps(timesteps).unsqueeze(2)
        n_tok = x.shape[2]
        x = x.reshape(B, K * n_tok, d) + self.pos_emb[: K * n_tok]  # (B, L, d)
        return self.drop(x)

    def _embed_returns(self, returns_to_go: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        """Return-to-go (...) -> (..., d): MDT's bins, or the scaled value."""
        if self.spec.return_bins:
            return self.embed_return(returns_to_go.long())
        return self.embed_return(returns_to_go.unsqueeze(-1).to(dtype))

    def _embed_timesteps(self, timesteps: torch.Tensor) -> torch.Tensor:
        """Episode timesteps (...) -> (..., d), past the table's end clamped to its last row."""
        assert self.embed_timestep is not None
        t = timesteps.long().clamp(0, self.embed_timestep.num_embeddings - 1)
        return self.embed_timestep(t)
