"""The experiment file (``pipelines/experiments/*.yaml``): one frozen model declares a whole
study. Stage settings are the stage YAMLs the stage commands read (a path relative to the
experiment file) plus dotted overrides; the runner adds only what wires the stages together
(seed, mode, task, the upstream checkpoint, run names, lineage tags).

    datasets      name -> a collect config | existing Minari ids | a DQN Replay import
    arms          name -> a pretraining config (+ overrides): dtmem, dt, slots-256, ...;
                  its own fine-tune overrides (a plain DT's LoRA on attention and MLP)
    baselines     name -> a policy with no pretraining (1-NN), evaluated on each held-out
                  task from that task's fine-tuning demonstrations
    seeds         every arm is pretrained once per seed
    train_tasks   the pretraining tasks (evaluated as `pretrained` and `forgetting`)
    held_out_tasks  fine-tuned on and evaluated `zero_shot` / `finetuned`
    finetune      per arm x seed x held-out task x mode (lora / full / frozen)
    evaluate      which evaluations, from one evaluate config
    sweeps        name -> a tuning/*.yaml, run as one node
    report        the comparison table's settings
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Literal

from pydantic import Field, model_validator

from dtmem.config.base import FrozenConfig, SafeId, SafeName

__all__ = [
    "ArmSpec",
    "BaselineArmSpec",
    "DatasetSpec",
    "DqnReplayImport",
    "EvaluateSpec",
    "ExperimentSpec",
    "FinetuneSpec",
    "MinariDatasets",
    "ReportSpec",
    "ResourcesSpec",
    "StageRef",
    "SweepSpec",
    "TaskOverride",
    "TrackingSpec",
]

FtMode = Literal["lora", "full", "frozen"]


class StageRef(FrozenConfig):
    """A stage's YAML config and the overrides applied to it."""

    config: Path = Field(..., description="the stage's YAML, relative to the experiment file")
    overrides: tuple[str, ...] = Field(
        (), description="dotted.key=value overrides, as --set on the stage's command"
    )


class MinariDatasets(FrozenConfig):
    """Datasets that already exist under the dataset root (made elsewhere)."""

    ids: tuple[SafeId, ...] = Field(..., min_length=1, description="Minari dataset ids")


class DqnReplayImport(FrozenConfig):
    """One game of the DQN Replay dataset, imported into a Minari dataset."""

    path: str = Field(..., description="the game's (or one run's) DQN Replay directory")
    dataset_id: SafeId = Field(..., description="the Minari dataset id to write")
    game: str | None = Field(None, description="ALE game name; null: the directory's name")
    runs: tuple[int, ...] = Field((1,), min_length=1, description="DQN runs (1..5) to read")
    checkpoints: tuple[int, ...] | None = Field(
        None, description="replay checkpoints to read, ascending; null: every complete one"
    )
    max_steps: int | None = Field(
        None, gt=0, description="stop after the episode reaching this many transitions"
    )


class DatasetSpec(FrozenConfig):
    """One dataset node: exactly one of collect, minari, dqn_replay."""

    collect: StageRef | None = Field(None, description="collect with this collect config")
    minari: MinariDatasets | None = Field(None, description="existing Minari datasets")
    dqn_replay: DqnReplayImport | None = Field(None, description="import DQN Replay data")

    @model_validator(mode="after")
    def _one(self) -> DatasetSpec:
        given = [k for k in ("collect", "minari", "dqn_replay") if getattr(self, k) is not None]
        if len(given) != 1:
            raise ValueError(f"give exactly one of collect, minari, dqn_replay (got {given})")
        return self


class ArmSpec(FrozenConfig):
    """One arm of the comparison: a pretraining config, pretrained once per seed."""

    pretrain: StageRef = Field(..., description="the pretraining config and its overrides")
    after: tuple[str, ...] = Field(
        (), description="extra upstream nodes by name (e.g. sweep/slots), besides its data"
    )
    finetune_overrides: tuple[str, ...] = Field(
        (),
        description="overrides of this arm's fine-tunes only, after finetune.overrides and the "
        "task's (e.g. a plain DT's LoRA: lora.modules=attention_mlp, lora.rank=3)",
    )


class BaselineArmSpec(FrozenConfig):
    """A policy with no pretraining, evaluated per seed x held-out task on the demonstrations
    that seed's fine-tunes of that task train on (a row of the report, ``ft_mode`` none)."""

    kind: Literal["nearest_neighbour"] = Field(
        ...,
        description="nearest_neighbour: the action of the nearest demonstrated state "
        "(dtmem.baselines); its data is the fine-tune config's data section for the task",
    )


class TaskOverride(FrozenConfig):
    """What differs for one held-out task: its own config, or overrides (its dataset)."""

    config: Path | None = Field(None, description="a config for this task; null: the shared one")
    overrides: tuple[str, ...] = Field((), description="overrides for this task only")


class FinetuneSpec(FrozenConfig):
    """Fine-tunes: one per arm x seed x held-out task x mode."""

    config: Path = Field(..., description="the fine-tuning config, relative to this file")
    overrides: tuple[str, ...] = Field((), description="overrides for every fine-tune")
    modes: tuple[FtMode, ...] = Field(("lora",), min_length=1, description="lora/full/frozen")
    arms: tuple[str, ...] | None = Field(None, description="arms fine-tuned; null: every arm")
    tasks: dict[str, TaskOverride] = Field(
        default_factory=dict,
        description="held-out task -> its config or overrides (each must be a held-out task)",
    )


class EvaluateSpec(FrozenConfig):
    """Evaluations, all from one evaluate config (its task list is set per node)."""

    config: Path = Field(..., description="the evaluation config, relative to this file")
    overrides: tuple[str, ...] = Field((), description="overrides for every evaluation")
    train_task_overrides: tuple[str, ...] = Field(
        (),
        description="overrides for the evaluations on the train tasks only (pretrained and "
        "forgetting, alike: forgetting is their difference), e.g. fewer episodes per task",
    )
    pretrained: bool = Field(True, description="each pretrained model on the train tasks")
    zero_shot: bool = Field(True, description="each pretrained model on the held-out tasks")
    finetuned: bool = Field(True, description="each fine-tuned model on its held-out task")
    forgetting: bool = Field(
        True, description="each fine-tuned model back on the train tasks (forgetting)"
    )
    memory: bool = Field(
        False,
        description="per fine-tune of a model with memory: its write and read addressing on "
        "one demonstration window, before and after, as heatmaps (a probe node)",
    )


class SweepSpec(FrozenConfig):
    """A sweep (``tuning/*.yaml``), run as one node."""

    config: Path = Field(..., description="the sweep config, relative to this file")
    overrides: tuple[str, ...] = Field((), description="overrides of the sweep config")
    after: tuple[str, ...] = Field(
        (), description="extra upstream nodes by name, besides the datasets its base reads"
    )


class ReportSpec(FrozenConfig):
    """The comparison table at the end (built from MLflow alone)."""

    enabled: bool = Field(True, description="build the report at the end of a run")
    aggregate: Literal["auto", "mean", "iqm"] = Field(
        "auto",
        description="across seeds and tasks: mean (Meta-World), IQM (Atari, as rliable); "
        "auto chooses from the metrics",
    )
    confidence: float = Field(0.95, gt=0, lt=1, description="confidence of the intervals")
    bootstrap_resamples: int = Field(2000, ge=100, description="stratified bootstrap resamples")
    seed: int = Field(0, description="seed of the bootstrap")
    out_dir: Path = Field(
        Path("reports"), description="where the markdown, CSV and plots go (<out_dir>/<name>)"
    )


class ResourcesSpec(FrozenConfig):
    """How many nodes run at once, on top of what each node asks Ray for."""

    max_parallel: int | None = Field(
        None, ge=1, description="nodes in flight at once; null: as the cluster's CPUs/GPUs allow"
    )


class TrackingSpec(FrozenConfig):
    """Where every run of the experiment goes."""

    uri: str | None = Field(
        None, description="MLflow tracking URI; null: $MLFLOW_TRACKING_URI, else ./mlflow.db"
    )
    experiment: SafeName = Field(..., description="MLflow experiment of every node's run")
    system_metrics: bool = Field(False, description="MLflow system metrics on every node's run")


class ExperimentSpec(FrozenConfig):
    """A whole study, run as a cached, resumable DAG of the existing stages."""

    name: SafeName = Field(..., description="the experiment's name (tags, run names, reports)")
    description: str = Field("", description="what the study asks, for the report")
    tracking: TrackingSpec = Field(..., description="MLflow")
    datasets_dir: Path | None = Field(
        None,
        description="dataset root when $MINARI_DATASETS_PATH is unset (relative: to the "
        "working directory); null: Minari's default",
    )
    datasets: dict[SafeName, DatasetSpec] = Field(
        ..., min_length=1, description="dataset nodes by name"
    )
    arms: dict[SafeName, ArmSpec] = Field(..., min_length=1, description="arms by name")
    baselines: dict[SafeName, BaselineArmSpec] = Field(
        default_factory=dict,
        description="baseline arms by name (no pretraining): evaluated after fine-tuning's "
        "data on each held-out task; needs finetune",
    )
    seeds: tuple[int, ...] = Field((0,), min_length=1, description="pretraining seeds")
    train_tasks: tuple[SafeName, ...] = Field(
        ..., min_length=1, description="the pretraining tasks, as the evaluate config names them"
    )
    held_out_tasks: tuple[SafeName, ...] = Field(
        (), description="tasks held out of pretraining: zero-shot and fine-tuning"
    )
    finetune: FinetuneSpec | None = Field(None, description="fine-tunes; null: none")
    evaluate: EvaluateSpec | None = Field(None, description="evaluations; null: none")
    sweeps: dict[SafeName, SweepSpec] = Field(default_factory=dict, description="sweep nodes")
    report: ReportSpec = Field(default_factory=ReportSpec, description="the report")
    resources: ResourcesSpec = Field(default_factory=ResourcesSpec, description="concurrency bound")

    @model_validator(mode="after")
    def _check(self) -> ExperimentSpec:
        if len(set(self.seeds)) != len(self.seeds):
            raise ValueError(f"seeds: {list(self.seeds)} lists a seed twice")
        both = sorted(set(self.train_tasks) & set(self.held_out_tasks))
        if both:
            raise ValueError(f"held_out_tasks: {both[0]} is also a train task")
        for name in self.baselines:
            if name in self.arms:
                raise ValueError(f"baselines.{name}: also the name of an arm")
            if self.finetune is None:
                raise ValueError(f"baselines.{name}: needs finetune (its data is the fine-tune's)")
        if self.finetune is not None:
            if not self.held_out_tasks:
                raise ValueError("finetune: no held_out_tasks to fine-tune on")
            for arm in self.finetune.arms or ():
                if arm not in self.arms:
                    raise ValueError(f"finetune.arms: {arm!r} is not an arm ({_names(self.arms)})")
            for task in self.finetune.tasks:
                if task not in self.held_out_tasks:
                    raise ValueError(f"finetune.tasks.{task}: not a held-out task")
        return self


def _names(d: Mapping[str, object]) -> str:
    return ", ".join(d) or "none"
