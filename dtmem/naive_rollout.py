"""The reference rollout: one env, and at every step the whole window rebuilt from the
episode's history and run through ``model(...)`` (no token cache, no batching). The tests
hold ``DTPolicy`` to it; the benchmarks use it as the naive baseline. No Ray.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from dtmem.data.windows import StateStats, to_env_action
from dtmem.dt_policy import (
    InvalidTargetError,
    check_compatible,
    check_state_stats,
    check_target,
    preprocess,
)
from dtmem.envs import VectorEnv
from dtmem.mdt_sampling import return_bins, reward_classes, sample_action, sample_expert_return
from dtmem.model import DecisionTransformer, ModelSpec
from dtmem.rollout import EpisodeStats

__all__ = ["naive_rollout"]


@torch.no_grad()
def naive_rollout(
    model: DecisionTransformer,
    env: VectorEnv,
    target: float | None,
    *,
    num_episodes: int,
    seed: int = 0,
    max_steps: int | None = None,
    greedy: bool = False,
    state_stats: StateStats | None = None,
    num_return_samples: int = 128,
    return_inverse_temperature: float = 0.75,
    action_inverse_temperature: float = 1.0,
    action_top_percentile: float = 50.0,
) -> list[EpisodeStats]:
    """The reference: one env, episodes one after another, and at every step the whole window
    rebuilt from the episode's history and run through ``model(...)`` (no token cache, no
    batching). Same seeds and conditioning as ``rollout(DTPolicy(...), ...)``.
    """
    check_target(target)
    if env.num_envs != 1:
        raise ValueError(f"naive_rollout runs one env, got {env.num_envs}")
    spec = model.spec
    check_compatible(spec, env.spec)
    check_state_stats(state_stats, env.spec)
    if target is None and spec.return_bins == 0:
        raise InvalidTargetError("this model has no return head: give a target return")
    model.eval()
    device = next(model.parameters()).device
    generator = torch.Generator(device=device).manual_seed(seed)
    bins, K = spec.return_bins > 0, spec.context
    results = []
    for e in range(num_episodes):
        obs = env.reset_at(0, seed + e) if e else env.reset([seed])[0]
        history: dict[str, list[Any]] = {k: [] for k in ("obs", "rtg", "act", "rew")}
        remaining, floor = (0.0 if target is None else target), -1
        total, success, t = 0.0, False, 0
        while True:
            history["obs"].append(preprocess(obs, state_stats))
            history["act"].append(np.zeros(spec.act_dim) if spec.act_dim else 0)
            history["rew"].append(0.0)
            if bins:
                rtg = return_bins(torch.tensor(remaining), spec.return_min, spec.return_bins)
                history["rtg"].append(int(rtg))
            else:
                history["rtg"].append(remaining / spec.return_scale)

            if target is None:
                out = model(*_naive_window(history, t, K, spec, device))
                ret = sample_expert_return(
                    out.return_logits[:, -1],
                    torch.tensor([floor], device=device),
                    num_samples=num_return_samples,
                    inverse_temperature=return_inverse_temperature,
                    greedy=greedy,
                    generator=generator,
                )
                history["rtg"][-1] = int(ret[0])
            out = model(*_naive_window(history, t, K, spec, device))
            if spec.action_kind == "discrete":
                action = sample_action(
                    out.action[:, -1],
                    top_percentile=action_top_percentile,
                    inverse_temperature=action_inverse_temperature,
                    greedy=greedy,
                    generator=generator,
                )
                history["act"][-1] = int(action[0])
            else:
                action = out.action[:, -1]
                history["act"][-1] = action[0].cpu().numpy()
            step = env.step(to_env_action(action.cpu().numpy(), state_stats))
            reward = float(step.rewards[0])
            history["rew"][-1] = reward
            total += reward
            success |= bool(step.success[0]) if step.success is not None else False
            earned = float(np.sign(reward)) if bins else reward
            remaining -= earned
            if target is None:
                floor = int(np.clip(history["rtg"][-1] - earned, 0, spec.return_bins - 1))
            t += 1
            obs = step.observations[0]
            timed_out = max_steps is not None and t >= max_steps
            if step.terminated[0] or step.truncated[0] or timed_out:
                results.append(
                    EpisodeStats(
                        episode=e,
                        seed=seed + e,
                        episode_return=total,
                        length=t,
                        success=success if step.success is not None else None,
                        truncated=bool(not step.terminated[0]),
                    )
                )
                break
    return results


def _naive_window(
    history: dict[str, list[Any]], t: int, K: int, spec: ModelSpec, device: torch.device
) -> tuple[torch.Tensor, ...]:
    """Steps max(0, t-K+1) .. t of the episode as one window (B=1), in dtmem/batch.py's format."""
    lo = max(0, t + 1 - K)
    obs = torch.as_tensor(np.stack(history["obs"][lo:]), device=device)[None]  # (1, L, *obs)
    rtg = torch.tensor([history["rtg"][lo:]], device=device)  # (1, L)
    act = torch.tensor(np.array([history["act"][lo:]]), device=device)  # (1, L) or (1, L, A)
    rew = torch.tensor([history["rew"][lo:]], device=device, dtype=torch.float64)  # (1, L)
    if spec.return_bins:
        rtg, rew = rtg.long(), reward_classes(rew)
    else:
        rtg, rew = rtg.float(), rew.float()
    act = act.long() if spec.action_kind == "discrete" else act.float()
    timesteps = torch.arange(lo, t + 1, device=device)[None]  # (1, L)
    return obs, rtg, act, rew, timesteps
