"""The training window: the one batch format shared by data, model, training and rollout.

A window holds K consecutive steps of one episode, right-padded when the episode has fewer
than K steps left. Right padding needs no attention mask: the model is causal, so padded
steps (which come after every valid one) can never influence a valid step's output; the
loss simply ignores them through ``mask``.

Shapes (B = batch, K = context steps):

    observations   (B, K, *obs_shape)  float32 vector states, or uint8 (B, K, 4, 84, 84) Atari
                                       frame stacks (never divided by 255 here: the encoder
                                       does it, once)
    actions        (B, K) int64        discrete (index into the full 18-action Atari set)
                   (B, K, act_dim)     float32 continuous, in [-1, 1]
    returns_to_go  (B, K) float32      continuous return-to-go, already scaled
                   (B, K) int64        Atari: MDT return bin in [0, 120)
    rewards        (B, K) int64        Atari: reward class (0 none, 1 positive, 3 negative)
                   (B, K) float32      continuous: raw reward (not a model input)
    timesteps      (B, K) int64        step index within the episode
    mask           (B, K) bool         True for real steps, False for padding
    task_id        (B,)   int64        index of the task in the training mixture
"""

from __future__ import annotations

from dataclasses import dataclass, fields

import torch


@dataclass(frozen=True)
class Batch:
    observations: torch.Tensor
    actions: torch.Tensor
    returns_to_go: torch.Tensor
    rewards: torch.Tensor
    timesteps: torch.Tensor
    mask: torch.Tensor
    task_id: torch.Tensor

    @property
    def batch_size(self) -> int:
        return int(self.mask.shape[0])

    @property
    def context(self) -> int:
        return int(self.mask.shape[1])

    def to(self, device: torch.device | str, non_blocking: bool = False) -> Batch:
        """The same window on ``device``."""
        moved = {
            f.name: getattr(self, f.name).to(device, non_blocking=non_blocking)
            for f in fields(self)
        }
        return Batch(**moved)
