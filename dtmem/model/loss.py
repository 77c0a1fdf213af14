"""The training objective: action loss, plus MDT's return and reward losses on Atari."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from dtmem.batch import Batch
from dtmem.model.transformer import DTOutput


@dataclass(frozen=True)
class LossParts:
    """total = action + returns + reward; the last two are 0 without Atari heads."""

    total: torch.Tensor
    action: torch.Tensor
    returns: torch.Tensor
    reward: torch.Tensor


def dt_loss(out: DTOutput, batch: Batch) -> LossParts:
    """Mean losses over the real (unpadded) steps of the window.

    Discrete actions: cross-entropy; continuous: MSE against actions in [-1, 1].
    Atari heads: cross-entropy on the return bin and the reward class.
    """
    m = batch.mask  # (B, K)
    if out.action.dtype.is_floating_point and batch.actions.dtype == torch.long:
        action = F.cross_entropy(out.action[m], batch.actions[m])
    else:
        action = F.mse_loss(out.action[m], batch.actions[m].to(out.action.dtype))
    zero = action.new_zeros(())
    returns = reward = zero
    if out.return_logits is not None:
        returns = F.cross_entropy(out.return_logits[m], batch.returns_to_go[m].long())
    if out.reward_logits is not None:
        reward = F.cross_entropy(out.reward_logits[m], batch.rewards[m].long())
    return LossParts(total=action + returns + reward, action=action, returns=returns, reward=reward)
