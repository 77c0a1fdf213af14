"""Config of ``dtmem collect``: which env and tasks, which behaviour policy, how many episodes,
how many Ray actors, and where the Minari datasets go (one dataset per task)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from dtmem.config.base import FrozenConfig, SafeId, SafeName
from dtmem.config.tracking import TrackingConfig

__all__ = ["CollectConfig", "DatasetNaming", "PolicyConfig", "RLlibConfig"]


class RLlibConfig(FrozenConfig):
    """Online RL agents (one per Atari game) whose checkpoints act as behaviour policies.

    Checkpoints live at ``<checkpoint_dir>/<game>/iter_<NNNNNN>`` (full RLlib algorithm
    checkpoints; the policy loads only their RLModule). Episodes of a game are split into
    equal consecutive blocks, one per checkpoint in ``checkpoint_iterations`` order, so that
    early (weak) and late (strong) agents both contribute, as DQN Replay's checkpoints do.
    """

    algorithm: Literal["PPO", "DQN"] = Field(
        "PPO", description="RLlib algorithm (new API stack) used to train the agents"
    )
    checkpoint_dir: str = Field(
        "rllib_agents", description="directory of the agents: <checkpoint_dir>/<game>/iter_N"
    )
    checkpoint_iterations: tuple[int, ...] = Field(
        ...,
        min_length=1,
        description=(
            "training iterations (Algorithm.train() calls, from 1) after which a checkpoint "
            "is saved; training stops at the last; each checkpoint plays an equal share of "
            "the episodes, in this order"
        ),
    )
    train_missing: bool = Field(
        True,
        description=(
            "train (or resume from its latest checkpoint) a game's agent when any of its "
            "checkpoints is missing; false makes a missing checkpoint an error"
        ),
    )
    train_batch_size: int = Field(
        4000, ge=1, description="PPO: env steps sampled per training iteration (DQN: unused)"
    )
    minibatch_size: int = Field(
        128, ge=1, description="SGD minibatch size (PPO minibatches; DQN's train batch)"
    )
    num_epochs: int = Field(4, ge=1, description="PPO epochs per iteration (ignored by DQN)")
    lr: float = Field(2.5e-4, gt=0, description="learning rate")
    num_env_runners: int = Field(
        1, ge=0, description="RLlib env-runner actors (0 samples in the training process)"
    )
    envs_per_env_runner: int = Field(4, ge=1, description="envs per env runner")
    rollout_fragment_length: int | Literal["auto"] = Field(
        "auto", description="steps per env per sample call"
    )
    conv_filters: tuple[tuple[int, int, int], ...] | None = Field(
        None,
        description=(
            "CNN encoder as (filters, kernel, stride) per layer; null is RLlib's default for "
            "84x84 inputs"
        ),
    )
    replay_capacity: int = Field(
        20_000,
        ge=1,
        description=(
            "DQN replay buffer size in steps; frames are stored as float32 (113 KB each), "
            "so 20k steps take ~2.3 GB"
        ),
    )
    max_episode_steps: int = Field(
        27_000, ge=1, description="agent steps after which a training episode is truncated"
    )

    @model_validator(mode="after")
    def _check(self) -> RLlibConfig:
        its = list(self.checkpoint_iterations)
        if its != sorted(set(its)):
            raise ValueError("checkpoint_iterations: must be strictly increasing")
        if its[0] < 1:
            raise ValueError("checkpoint_iterations: iterations count from 1")
        return self


class PolicyConfig(FrozenConfig):
    """The behaviour policy and its noise.

    kinds:
      expert          Meta-World's scripted expert (``metaworld.policies``)
      random          uniform random actions
      epsilon_greedy  the greedy (argmax) action of an RLlib checkpoint (Atari)
      rllib           a sample from an RLlib checkpoint's action distribution (Atari)

    ``epsilon`` mixes in uniform random actions with any kind; ``noise_std`` adds Gaussian
    noise to the expert's continuous actions (then clipped to [-1, 1]).
    """

    kind: Literal["expert", "random", "epsilon_greedy", "rllib"] = Field(
        ..., description="behaviour policy: expert | random | epsilon_greedy | rllib"
    )
    noise_std: float = Field(
        0.0, ge=0, description="std of Gaussian noise added to expert actions (Meta-World)"
    )
    epsilon: float = Field(
        0.0, ge=0, le=1, description="probability of a uniform random action at each step"
    )
    rllib: RLlibConfig | None = Field(
        None, description="the RLlib agents (required by epsilon_greedy and rllib)"
    )

    @model_validator(mode="after")
    def _check(self) -> PolicyConfig:
        if self.kind in ("epsilon_greedy", "rllib") and self.rllib is None:
            raise ValueError(f"rllib: policy kind {self.kind!r} needs an rllib section")
        if self.kind in ("expert", "random") and self.rllib is not None:
            raise ValueError(f"rllib: not used by policy kind {self.kind!r}; remove it")
        if self.noise_std > 0 and self.kind != "expert":
            raise ValueError(f"noise_std: applies to the expert only, not {self.kind!r}")
        return self


class DatasetNaming(FrozenConfig):
    """Dataset ids: ``<namespace>/<name with {task}>-v<version>``, one per task."""

    namespace: SafeId = Field(
        ...,
        min_length=2,
        description="Minari namespace (at least 2 characters, '/' allowed), e.g. dtmem/metaworld",
    )
    name: SafeName = Field(
        "{task}", description="dataset name; '{task}' is replaced by the task or game name"
    )
    version: int = Field(0, ge=0, description="dataset version, the id's -v<N> suffix")

    @model_validator(mode="after")
    def _check(self) -> DatasetNaming:
        if "{task}" not in self.name:
            raise ValueError(f"name: {self.name!r} must contain '{{task}}' (one id per task)")
        if self.namespace.startswith("/") or self.namespace.endswith("/"):
            raise ValueError(f"namespace: {self.namespace!r} must not start or end with '/'")
        return self

    def dataset_id(self, task: str) -> str:
        return f"{self.namespace}/{self.name.replace('{task}', task)}-v{self.version}"


class CollectConfig(FrozenConfig):
    """``dtmem collect``: episodes of a behaviour policy, one Minari dataset per task."""

    suite: Literal["metaworld", "atari"] = Field(
        ..., description="env suite: metaworld (MT1 tasks) or atari (ALE v5 games)"
    )
    tasks: tuple[str, ...] = Field(
        ...,
        min_length=1,
        description="Meta-World task names (reach-v3) or Atari game names (Breakout)",
    )
    episodes_per_task: int = Field(..., ge=1, description="episodes written per task")
    max_steps: int | None = Field(
        None,
        ge=1,
        description=(
            "cap on agent steps per episode (the episode is then truncated); null keeps the "
            "env's own limit (Meta-World: 500)"
        ),
    )
    keep: Literal["all", "successful"] = Field(
        "all",
        description=(
            "'all' writes every episode; 'successful' (Meta-World) writes only episodes with "
            "info['success'] at some step, attempting more until episodes_per_task are kept"
        ),
    )
    max_attempts: int | None = Field(
        None,
        ge=1,
        description=(
            "keep=successful: stop a task after this many attempted episodes (null: 3 x "
            "episodes_per_task); a task left short is written with what it kept"
        ),
    )
    policy: PolicyConfig = Field(..., description="behaviour policy")
    num_actors: int = Field(2, ge=1, description="Ray actors collecting in parallel")
    envs_per_actor: int = Field(1, ge=1, description="envs each actor steps together")
    actor_cpus: float = Field(1.0, gt=0, description="CPUs Ray reserves per actor")
    chunk_episodes: int | None = Field(
        None,
        ge=1,
        description="episodes per work item sent to an actor; null means envs_per_actor",
    )
    seed: int = Field(
        0,
        ge=0,
        description=(
            "collection seed; episode e of task t gets env and policy seeds derived from "
            "(seed, t, e) alone, so the data does not depend on actors or scheduling"
        ),
    )
    dataset: DatasetNaming = Field(..., description="how the datasets are named")
    root: str | None = Field(
        None,
        description="datasets root; null means $MINARI_DATASETS_PATH, else ~/.minari/datasets",
    )
    overwrite: bool = Field(
        False,
        description=(
            "replace an existing dataset collected with another config; an existing dataset "
            "made by this same config is kept and reused either way"
        ),
    )
    tracking: TrackingConfig = Field(
        default_factory=lambda: TrackingConfig(), description="MLflow tracking"
    )

    @model_validator(mode="after")
    def _check(self) -> CollectConfig:
        from dtmem.data.episodes import DataError
        from dtmem.data.minari_io import validate_dataset_id

        for i, task in enumerate(self.tasks):
            self._check_task(i, task)
        dupes = sorted({t for t in self.tasks if self.tasks.count(t) > 1})
        if dupes:
            raise ValueError(f"tasks: {dupes[0]!r} is listed twice")
        kinds = {"metaworld": ("expert", "random"), "atari": ("random", "epsilon_greedy", "rllib")}
        if self.policy.kind not in kinds[self.suite]:
            raise ValueError(
                f"policy.kind: {self.policy.kind!r} does not apply to {self.suite}; use one of "
                f"{', '.join(kinds[self.suite])}"
            )
        if self.keep == "successful" and self.suite != "metaworld":
            raise ValueError("keep: 'successful' needs a success signal (Meta-World only)")
        if self.max_attempts is not None and self.keep != "successful":
            raise ValueError("max_attempts: only used with keep: successful")
        if self.max_attempts is not None and self.max_attempts < self.episodes_per_task:
            raise ValueError(
                f"max_attempts: {self.max_attempts} is fewer than episodes_per_task="
                f"{self.episodes_per_task}"
            )
        for task in self.tasks:
            try:
                validate_dataset_id(self.dataset.dataset_id(task))
            except DataError as exc:
                raise ValueError(f"dataset: {exc}") from None
        return self

    def _check_task(self, i: int, task: str) -> None:
        """Raise naming ``tasks.<i>`` and listing the valid names if ``task`` is unknown."""
        from dtmem.envs.atari import canonical_game
        from dtmem.envs.metaworld import check_task

        try:
            if self.suite == "metaworld":
                check_task(task)
                return
            game = canonical_game(task)
        except ValueError as exc:
            raise ValueError(f"tasks.{i}: {exc}") from None
        if game != task:
            raise ValueError(f"tasks.{i}: write the game {task!r} as {game!r}")

    @property
    def attempts_per_task(self) -> int:
        """The most episodes attempted per task."""
        if self.keep == "all":
            return self.episodes_per_task
        return self.max_attempts or 3 * self.episodes_per_task

    @property
    def episodes_per_chunk(self) -> int:
        return self.chunk_episodes or self.envs_per_actor

    def dataset_ids(self) -> list[str]:
        return [self.dataset.dataset_id(t) for t in self.tasks]
