"""Observation encoders: one step's observation -> ``n_tokens`` tokens of width d.

All take (B, K, *obs_shape) and return (B, K, n_tokens, d). Atari frames arrive as uint8
(B, K, 4, 84, 84) and are divided by 255 here, once, for training and evaluation alike
(the authors' code divided twice in training and once in evaluation).
"""

from __future__ import annotations

import torch
from torch import nn

FRAME_STACK, FRAME_SIZE = 4, 84
ATARI_OBS_SHAPE = (FRAME_STACK, FRAME_SIZE, FRAME_SIZE)


def _frames_to_float(obs: torch.Tensor) -> torch.Tensor:
    if obs.dtype != torch.uint8:
        raise TypeError(f"Atari frames must be uint8 in [0, 255], got {obs.dtype}")
    return obs.float() / 255.0


class VectorEncoder(nn.Module):
    """A vector state (e.g. Meta-World's 39 dims) -> 1 token: Linear(obs_dim, d)."""

    n_tokens = 1

    def __init__(self, obs_dim: int, d_model: int) -> None:
        super().__init__()
        self.obs_shape = (obs_dim,)
        self.proj = nn.Linear(obs_dim, d_model)

    def forward(self, obs: torch.Tensor) -> torch.Tensor:
        return self.proj(obs).unsqueeze(2)  # (B, K, 1, d)


class ConvEncoder(nn.Module):
    """The DQN Nature CNN: 4x84x84 frames -> 1 token (about 13x fewer tokens than patches)."""

    n_tokens = 1

    def __init__(self, d_model: int) -> None:
        super().__init__()
        self.obs_shape = ATARI_OBS_SHAPE
        self.net = nn.Sequential(
            nn.Conv2d(FRAME_STACK, 32, kernel_size=8, stride=4),
            nn.ReLU(),
            nn.Conv2d(32, 64, kernel_size=4, stride=2),
            nn.ReLU(),
            nn.Conv2d(64, 64, kernel_size=3, stride=1),
            nn.ReLU(),
            nn.Flatten(),
            nn.Linear(64 * 7 * 7, d_model),
        )

    def forward(self, obs: torch.Tensor) -> torch.Tensor:
        B, K = obs.shape[:2]
        x = _frames_to_float(obs).reshape(B * K, *self.obs_shape)  # (B*K, 4, 84, 84)
        return self.net(x).view(B, K, 1, -1)  # (B, K, 1, d)


class PatchEncoder(nn.Module):
    """MDT: 4x84x84 frames cut into 14x14 patches (6x6 = 36 tokens), each Linear to d,
    plus a learned embedding of the patch's position."""

    patch = 14
    n_tokens = (FRAME_SIZE // 14) ** 2

    def __init__(self, d_model: int) -> None:
        super().__init__()
        self.obs_shape = ATARI_OBS_SHAPE
        self.proj = nn.Linear(FRAME_STACK * self.patch * self.patch, d_model)
        self.patch_pos = nn.Parameter(torch.zeros(self.n_tokens, d_model))

    def forward(self, obs: torch.Tensor) -> torch.Tensor:
        B, K = obs.shape[:2]
        p, g = self.patch, FRAME_SIZE // self.patch
        x = _frames_to_float(obs).reshape(B, K, FRAME_STACK, g, p, g, p)
        x = x.permute(0, 1, 3, 5, 2, 4, 6)  # (B, K, g, g, 4, p, p)
        x = x.reshape(B, K, g * g, FRAME_STACK * p * p)  # (B, K, 36, 784)
        return self.proj(x) + self.patch_pos  # (B, K, 36, d)
