"""Pure transforms from episode arrays to training windows (numpy in, numpy out).

Timing convention (as CORL's dt.py): at step t the agent sees observation s_t and the
return-to-go R_t = r_t + r_{t+1} + ... + r_{T-1}, takes a_t and receives r_t. A window is K
consecutive steps [start, start + L) of one episode, L = min(K, T - start), right-padded to K
with zeros and a mask that is False on the padding (see ``dtmem.batch``).

Atari (MDT's encoding):
    return-to-go bin  R_t = sum_{t' >= t} sign(r_t'), clipped to [-20, 99], plus 20: a bin in
                      [0, 120) whose bin 0 is the return -20
    reward class      0 for r = 0, 1 for r > 0, 3 for r < 0 (2 is unused)
    frame stack       obs_t = frames (t-3, t-2, t-1, t), oldest first; frames before the
                      episode start are zeros; uint8 throughout, never divided by 255
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

# The statistics that travel with a model live in dtmem.data.stats; imported from here too.
from dtmem.data.stats import (
    StateStats,
    compute_state_stats,
    load_state_stats,
    normalize_states,
    save_state_stats,
    to_env_action,
)
from dtmem.mdt_bins import RETURN_BINS, RETURN_MAX, RETURN_MIN

__all__ = [
    "ATARI_RETURN_MAX",
    "ATARI_RETURN_MIN",
    "NUM_RETURN_BINS",
    "StateStats",
    "Window",
    "atari_return_bins",
    "atari_reward_classes",
    "compute_state_stats",
    "continuous_returns_to_go",
    "load_state_stats",
    "make_window",
    "normalize_states",
    "pad_right",
    "returns_to_go",
    "save_state_stats",
    "stack_frames",
    "to_env_action",
    "valid_mask",
    "window_starts",
]

# MDT's return bins live in dtmem/mdt_bins.py (shared with the model), under these names here
ATARI_RETURN_MIN, ATARI_RETURN_MAX, NUM_RETURN_BINS = RETURN_MIN, RETURN_MAX, RETURN_BINS


def returns_to_go(rewards: np.ndarray) -> np.ndarray:
    """R_t = sum_{t' >= t} r_t'.  rewards (T,) -> (T,) float64 (summed in float64)."""
    r = np.asarray(rewards, dtype=np.float64)
    return np.cumsum(r[::-1])[::-1].copy()


def continuous_returns_to_go(rewards: np.ndarray, return_scale: float) -> np.ndarray:
    """Return-to-go divided by ``return_scale``.  rewards (T,) -> (T,) float32."""
    if return_scale <= 0:
        raise ValueError(f"return_scale must be > 0, got {return_scale}")
    return (returns_to_go(rewards) / return_scale).astype(np.float32)


def atari_return_bins(rewards: np.ndarray) -> np.ndarray:
    """MDT return-to-go bins.  rewards (T,) -> (T,) int64 in [0, 120).

    Each reward is clipped to its sign (-1, 0 or 1), the clipped rewards are summed from t to
    the end of the episode, the sum is clipped to [-20, 99] and shifted by +20.
    """
    clipped = np.sign(np.asarray(rewards, dtype=np.float64))  # (T,) in {-1, 0, 1}
    rtg = np.cumsum(clipped[::-1])[::-1]  # (T,) integers as float64
    rtg = np.clip(rtg, ATARI_RETURN_MIN, ATARI_RETURN_MAX)
    return (rtg - ATARI_RETURN_MIN).astype(np.int64)


def atari_reward_classes(rewards: np.ndarray) -> np.ndarray:
    """MDT reward classes.  rewards (T,) -> (T,) int64: 0 none, 1 positive, 3 negative."""
    r = np.asarray(rewards)
    out = np.zeros(r.shape, dtype=np.int64)
    out[r > 0] = 1
    out[r < 0] = 3
    return out


def pad_right(x: np.ndarray, context: int) -> np.ndarray:
    """Zero-pad the leading axis to ``context`` rows.  x (L, ...) -> (context, ...), L <= context."""
    length = x.shape[0]
    if length > context:
        raise ValueError(f"cannot pad {length} rows to {context}")
    out = np.zeros((context, *x.shape[1:]), dtype=x.dtype)
    out[:length] = x
    return out


def valid_mask(length: int, context: int) -> np.ndarray:
    """(context,) bool, True on the first ``length`` entries."""
    return np.arange(context) < length


def stack_frames(frames: np.ndarray, start: int, length: int, n_stack: int) -> np.ndarray:
    """Stacks of the ``n_stack`` most recent frames for steps [start, start + length).

    frames (N, *frame_shape) -> (length, n_stack, *frame_shape), same dtype.
    out[i, j] = frames[start + i - (n_stack - 1) + j], or zeros where that index is < 0 (before
    the episode start). Requires start + length <= N.
    """
    if start < 0 or length < 0 or start + length > frames.shape[0]:
        raise ValueError(f"steps [{start}, {start + length}) out of range for {frames.shape[0]}")
    lo = start - (n_stack - 1)
    seg = frames[max(lo, 0) : start + length]  # (m, *frame_shape)
    n_zero = max(0, -lo)
    if n_zero:
        zeros = np.zeros((n_zero, *frames.shape[1:]), dtype=frames.dtype)
        seg = np.concatenate([zeros, seg], axis=0)  # (length + n_stack - 1, *frame_shape)
    # the j-th frame of every stack is a shifted slice of the padded segment
    return np.stack([seg[j : j + length] for j in range(n_stack)], axis=1)


def window_starts(num_steps: int, context: int, phase: int) -> np.ndarray:
    """Starts of the windows that cover an episode's steps once each.  -> (n,) int64.

    The first window is [0, phase) when phase > 0, then every K steps from ``phase``: windows
    [0, phase), [phase, phase + K), [phase + K, phase + 2K), ... Each step lies in exactly one
    window; every window but the first and the last has K steps. phase in [0, min(K, T)).
    """
    if not 0 <= phase < max(1, min(context, num_steps)):
        raise ValueError(f"phase {phase} outside [0, min({context}, {num_steps}))")
    regular = np.arange(phase, num_steps, context, dtype=np.int64)
    if phase == 0:
        return regular
    return np.concatenate([np.zeros(1, dtype=np.int64), regular])


@dataclass(frozen=True)
class Window:
    """One unbatched window (shapes as ``dtmem.batch.Batch`` without the batch axis)."""

    observations: np.ndarray  # (K, *obs_shape) or (K, n_stack, *frame_shape)
    actions: np.ndarray  # (K,) or (K, act_dim)
    returns_to_go: np.ndarray  # (K,)
    rewards: np.ndarray  # (K,)
    timesteps: np.ndarray  # (K,) int64
    mask: np.ndarray  # (K,) bool


def make_window(
    observations: np.ndarray,
    actions: np.ndarray,
    returns_to_go: np.ndarray,
    rewards: np.ndarray,
    start: int,
    context: int,
    frame_stack: int = 1,
    length: int | None = None,
) -> Window:
    """The window of steps [start, start + L), right-padded to ``context``.

    L = ``length`` if given (1 <= L <= min(context, T - start)), else min(context, T - start).
    observations (>= T, *obs_shape); actions (T, ...); returns_to_go (T,); rewards (T,),
    already in the form the model reads (scaled returns or bins, raw rewards or classes).
    With frame_stack > 1 the observations are frame stacks (K, frame_stack, *obs_shape).
    """
    T = actions.shape[0]
    if not 0 <= start < T:
        raise ValueError(f"start {start} outside the episode's {T} steps")
    longest = min(context, T - start)
    if length is None:
        length = longest
    elif not 1 <= length <= longest:
        raise ValueError(f"length {length} outside [1, {longest}]")
    end = start + length
    if frame_stack > 1:
        obs = stack_frames(observations, start, length, frame_stack)  # (L, n, *frame)
    else:
        obs = observations[start:end]  # (L, *obs_shape)
    return Window(
        observations=pad_right(obs, context),
        actions=pad_right(actions[start:end], context),
        returns_to_go=pad_right(returns_to_go[start:end], context),
        rewards=pad_right(rewards[start:end], context),
        timesteps=pad_right(np.arange(start, end, dtype=np.int64), context),
        mask=valid_mask(length, context),
    )
