"""Synthetic datasets in the real format, for tests and benchmarks (no env, no download)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from dtmem.data.episodes import Episode
from dtmem.data.minari_io import DatasetInfo, write_dataset

OBS_DIM, ACT_DIM = 39, 4  # Meta-World's state and action sizes


def write_metaworld_like(
    root: str | Path,
    dataset_id: str,
    task: str,
    *,
    episodes: int,
    steps: int,
    seed: int = 0,
) -> DatasetInfo:
    """A Minari dataset with Meta-World's shapes whose action is a fixed function of the
    state, ``a[i] = clip(0.4 + 0.5 s[i], -1, 1)`` for the first 4 dims, so a model learns some
    of it in a few steps. States are standard normal, rewards uniform in [0, 1), and every
    episode is truncated after ``steps`` steps."""
    import gymnasium as gym

    rng = np.random.default_rng(seed)
    eps = []
    for _ in range(episodes):
        obs = rng.standard_normal((steps + 1, OBS_DIM)).astype(np.float32)
        eps.append(
            Episode(
                observations=obs,
                actions=np.clip(0.4 + 0.5 * obs[:-1, :ACT_DIM], -1, 1).astype(np.float32),
                rewards=rng.uniform(0, 1, steps).astype(np.float32),
                terminations=np.zeros(steps, bool),
                truncations=np.r_[np.zeros(steps - 1, bool), True],
            )
        )
    return write_dataset(
        dataset_id,
        eps,
        observation_space=gym.spaces.Box(-np.inf, np.inf, (OBS_DIM,), np.float32),
        action_space=gym.spaces.Box(-1, 1, (ACT_DIM,), np.float32),
        env_id=f"Meta-World/{task}",
        task=task,
        root=root,
    )
