"""MDT's encodings and sampling rules as pure tensor functions (no state, no env).

- Returns and rewards are discretised as MDT does: a return in bins of one point from
  ``return_min`` (``return_bins``); a reward as one of the classes 0 none, 1 positive,
  3 negative (``reward_classes``).
- Expert-return sampling (``sample_expert_return``) and MDT's action sampling
  (``sample_action``); ``dtmem.dt_policy`` says where each is used in a step.
"""

from __future__ import annotations

import torch

__all__ = ["return_bins", "reward_classes", "sample_action", "sample_expert_return"]


def return_bins(returns: torch.Tensor, return_min: int, num_bins: int) -> torch.Tensor:
    """Returns (any shape, in MDT units) -> int64 bins: round, clip to the range, shift."""
    return (torch.round(returns) - return_min).clamp(0, num_bins - 1).long()


def reward_classes(rewards: torch.Tensor) -> torch.Tensor:
    """Raw rewards (any shape) -> MDT's reward classes, int64: 0 none, 1 positive, 3 negative."""
    return (rewards > 0).long() + 3 * (rewards < 0).long()


def sample_expert_return(
    return_logits: torch.Tensor,
    floor: torch.Tensor,
    *,
    num_samples: int,
    inverse_temperature: float,
    greedy: bool,
    generator: torch.Generator | None,
) -> torch.Tensor:
    """MDT's optimistic return: the largest of ``num_samples`` bins drawn per env.

    return_logits (B, bins); floor (B,) int64, the lowest bin allowed (-1: none).
    Samples come from softmax(return_logits * inverse_temperature); those below ``floor``
    are dropped and the maximum is taken per env (row), or ``floor`` if none is left.
    ``greedy`` replaces the samples by the single most likely bin. -> (B,) int64.
    """
    if greedy:
        best = return_logits.argmax(dim=-1)  # (B,)
    else:
        probs = torch.softmax(return_logits.float() * inverse_temperature, dim=-1)  # (B, bins)
        draws = torch.multinomial(probs, num_samples, replacement=True, generator=generator)
        best = draws.max(dim=-1).values  # (B,): one maximum per env
    return torch.maximum(best, floor)


def sample_action(
    logits: torch.Tensor,
    *,
    top_percentile: float,
    inverse_temperature: float,
    greedy: bool,
    generator: torch.Generator | None,
) -> torch.Tensor:
    """MDT's action sample: logits (B, A) -> (B,) int64.

    Logits not strictly above their ``top_percentile`` percentile (linear interpolation, as
    ``jnp.percentile``) are set to -inf, then one action is drawn from
    softmax(logits * inverse_temperature). Where MDT would keep nothing (all logits tied at
    the top), the tied maxima are kept. ``greedy`` takes the argmax.
    """
    if greedy:
        return logits.argmax(dim=-1)
    logits = logits.float()
    cut = torch.quantile(logits, top_percentile / 100.0, dim=-1, keepdim=True)  # (B, 1)
    keep = (logits > cut) | (logits == logits.max(dim=-1, keepdim=True).values)
    masked = torch.where(keep, logits * inverse_temperature, -torch.inf)
    probs = torch.softmax(masked, dim=-1)  # (B, A)
    return torch.multinomial(probs, 1, generator=generator).squeeze(-1)
