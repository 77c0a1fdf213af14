"""Config of ``dtmem evaluate``: which checkpoint (or baseline policy), which Atari games and
Meta-World tasks, how many episodes of how many steps, and how many Ray actors with how many
envs each."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from dtmem.config.base import FrozenConfig
from dtmem.config.data import DataConfig
from dtmem.config.tracking import TrackingConfig

__all__ = ["AtariEvalConfig", "BaselineConfig", "EvaluateConfig", "MetaWorldEvalConfig"]


class AtariEvalConfig(FrozenConfig):
    """Atari games, MDT's protocol: 16 episodes of at most 5000 agent steps, raw score, the
    target return sampled from the model's return head (expert-return sampling)."""

    games: tuple[str, ...] = Field(
        ..., min_length=1, description="ALE game names, e.g. [Alien, MsPacman, Pong]"
    )
    episodes: int = Field(16, ge=1, description="episodes per game (MDT: 16)")
    max_steps: int = Field(
        5000, ge=1, description="agent steps after which an episode is cut (MDT: 5000)"
    )


class MetaWorldEvalConfig(FrozenConfig):
    """Meta-World tasks: success rate over 20 episodes per task, a fixed target return."""

    tasks: Literal["ml45_train", "ml45_test"] | tuple[str, ...] = Field(
        ...,
        description="'ml45_train' or 'ml45_test' (ML45's 45 train / 5 held-out tasks), or a "
        "list of task names, e.g. [reach-v3, push-v3]",
    )
    episodes: int = Field(20, ge=1, description="episodes per task (the protocol: 20)")
    target_return: float = Field(
        ...,
        allow_inf_nan=False,
        description="return-to-go the model is conditioned on at the first step (raw reward "
        "units; the model divides it by its return_scale)",
    )
    max_steps: int = Field(
        500, ge=1, description="agent steps after which an episode is cut (the env's limit: 500)"
    )

    @model_validator(mode="after")
    def _check_tasks(self) -> MetaWorldEvalConfig:
        if isinstance(self.tasks, tuple) and not self.tasks:
            raise ValueError("tasks: give at least one task, or ml45_train / ml45_test")
        return self


class BaselineConfig(FrozenConfig):
    """A baseline policy (``dtmem.baselines``) evaluated like a model, with no checkpoint."""

    kind: Literal["nearest_neighbour"] = Field(
        ...,
        description="nearest_neighbour: the action of the demonstrated state nearest to the "
        "current one (standardised states, exact search)",
    )
    data: DataConfig = Field(
        ...,
        description="the demonstrations: a fine-tune's data section (the same datasets and "
        "episode_fraction subset it trains on; only the datasets, root, fraction and seed "
        "matter here)",
    )


class EvaluateConfig(FrozenConfig):
    """``dtmem evaluate``: one checkpoint on Atari games and/or Meta-World tasks, by a pool of
    Ray actors that each step several envs and run the policy on all of them in one batch."""

    checkpoint: str | None = Field(
        None,
        min_length=1,
        description="the model: a model or run directory, runs:/<run_id>[/<artifact dir>], "
        "models:/<name>@<alias> or models:/<name>/<version>; null with a baseline instead",
    )
    baseline: BaselineConfig | None = Field(
        None, description="a non-model policy evaluated instead of a checkpoint; null: none"
    )
    atari: AtariEvalConfig | None = Field(None, description="Atari games; null: none")
    metaworld: MetaWorldEvalConfig | None = Field(None, description="Meta-World tasks; null: none")
    num_actors: int = Field(
        2,
        ge=1,
        description="workers that run episodes: Ray actors, or this process alone when the "
        "pool would be one worker on this machine",
    )
    envs_per_actor: int = Field(
        16,
        ge=1,
        description="envs each actor steps together (one batched model call per step); "
        "episodes are handed out in chunks of this many (fewer, where chunks should "
        "outnumber the actors)",
    )
    cpus_per_actor: float = Field(1.0, gt=0, description="CPUs Ray reserves for each actor")
    seed: int = Field(
        0,
        ge=0,
        description="base seed: episode e of task T runs with env and policy seeds derived "
        "from (seed, T, e), whatever the number of actors",
    )
    greedy: bool = Field(
        False,
        description="argmax actions and most likely return bin instead of MDT's sampling "
        "(continuous actions are deterministic either way)",
    )
    max_actor_failures: int = Field(
        3,
        ge=0,
        description="dead actors replaced (their unfinished episodes re-run) before the "
        "evaluation gives up",
    )
    bootstrap_resamples: int = Field(
        2000, ge=10, description="bootstrap resamples of the IQM confidence interval"
    )
    tracking: TrackingConfig = Field(default_factory=TrackingConfig, description="MLflow")

    @model_validator(mode="after")
    def _check_something(self) -> EvaluateConfig:
        if self.atari is None and self.metaworld is None:
            raise ValueError("nothing to evaluate: give atari.games and/or metaworld.tasks")
        if (self.checkpoint is None) == (self.baseline is None):
            raise ValueError("give exactly one of checkpoint (a model) and baseline")
        return self
