"""The driver of ``dtmem collect`` (``pipelines/collect.py``): what identifies a task's data
(``fingerprint``; ``existing_summary`` reuses a dataset made by the same config), the RLlib
agents' checkpoints, the scheduling of episode chunks on the actor pool shared with
evaluation (``dtmem.actor_pool``) with each task's episodes written in index order by its own
``DatasetWriter`` (``collect_tasks``), and the summary table and MLflow logging (``report``).

Ray is entered by ``pipelines/collect.py`` through ``dtmem.ray_session``; the actors come
from ``dtmem.collect.actors``.
"""

from __future__ import annotations

import hashlib
import json
import math
import time
from collections.abc import Callable, Hashable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from rich import box
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
)
from rich.table import Table

from dtmem import metrics
from dtmem.actor_pool import PoolError, RayPool, remote_class
from dtmem.collect.actors import CollectChunk, CollectWorker, EpisodeResult, dataset_spaces
from dtmem.collect.policies import num_variants, plan_episodes
from dtmem.config.collect import CollectConfig
from dtmem.data.env_specs import recording_env_spec
from dtmem.data.episodes import DataError, DatasetExistsError
from dtmem.data.minari_io import DatasetInfo, DatasetWriter, open_dataset
from dtmem.envs import env_id
from dtmem.tracking import RunHandle

__all__ = [
    "CollectError",
    "CollectResult",
    "DatasetSummary",
    "check_checkpoints",
    "collect_pool",
    "collect_tasks",
    "existing_summary",
    "fingerprint",
    "report",
    "train_agents",
]

FORMAT = 1  # bump when the recorded format changes, so old datasets are not reused
QUEUED_PER_ACTOR = 2  # chunks queued on each actor, so it never waits for the driver
LOG_EVERY_S = 10.0  # throughput metrics at most this often


class CollectError(ValueError):
    """A collection that cannot run or finish as configured (one-line message)."""


# --- what identifies a task's data -----------------------------------------------------------


def fingerprint(cfg: CollectConfig, task: str) -> str:
    """sha256 of everything that decides a task's episodes (not actors or chunking)."""
    policy = cfg.policy.model_dump(mode="json")
    if cfg.policy.rllib is not None:  # the checkpoints act, not the recipe that made them
        policy["rllib"] = {
            "checkpoint_dir": str(Path(cfg.policy.rllib.checkpoint_dir).expanduser().resolve()),
            "checkpoint_iterations": list(cfg.policy.rllib.checkpoint_iterations),
        }
    decisive: dict[str, Any] = {
        "format": FORMAT,
        "suite": cfg.suite,
        "task": task,
        "episodes_per_task": cfg.episodes_per_task,
        "attempts": cfg.attempts_per_task,
        "max_steps": cfg.max_steps,
        "keep": cfg.keep,
        "policy": policy,
        "seed": cfg.seed,
    }
    if cfg.policy.rllib is not None:
        # batched inference decides which episodes share a forward pass: see the note on
        # reproducibility in CheckpointPolicy
        decisive["batching"] = [cfg.envs_per_actor, cfg.episodes_per_chunk]
    text = json.dumps(decisive, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()


@dataclass
class DatasetSummary:
    """One dataset of the collection, as printed and logged."""

    dataset_id: str
    task: str
    status: str  # "written" or "reused"
    episodes: int
    attempted: int
    steps: int
    return_mean: float
    return_min: float
    return_max: float
    success_rate: float | None  # of the attempted episodes; None without a success signal
    content_hash: str

    def row(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class CollectResult:
    """What ``collect`` did: one summary per task (task order), the MLflow run, and the
    throughput of the collection phase (actors started to last episode in; env steps of
    every attempted episode, including dropped ones; zeros when everything was reused)."""

    datasets: list[DatasetSummary]
    run_id: str
    episodes: int
    env_steps: int
    seconds: float

    @property
    def env_steps_per_s(self) -> float:
        return self.env_steps / self.seconds if self.seconds > 0 else 0.0


def existing_summary(cfg: CollectConfig, task: str, root: Path) -> DatasetSummary | None:
    """The summary of the task's dataset if it exists and was made by this config; None if
    it must be collected. Raises if it exists from another config and overwrite is off."""
    dataset_id = cfg.dataset.dataset_id(task)
    if not (root / dataset_id).exists():
        return None
    try:
        reader = open_dataset(dataset_id, root)
        made = (reader.metadata.get("dtmem") or {}).get("collect") or {}
    except DataError:
        made = {}
    if made.get("fingerprint") == fingerprint(cfg, task) and "summary" in made:
        digest = reader.stored_content_hash or ""
        return DatasetSummary(**made["summary"], status="reused", content_hash=digest)
    if cfg.overwrite:
        return None
    raise DatasetExistsError(
        f"{root / dataset_id}: dataset {dataset_id!r} exists from another collection config "
        "(set overwrite: true to replace it, or change dataset.version)"
    )


# --- per-task bookkeeping in the driver --------------------------------------------------------


@dataclass
class _TaskState:
    """One task's progress: what is dispatched, what came back, what is written."""

    task: str
    dataset_id: str
    wanted: int  # episodes to keep
    attempts: int  # most episodes to try
    variants: int
    next_dispatch: int = 0  # next episode index to hand out
    next_write: int = 0  # next episode index to write (or drop)
    outstanding: int = 0  # dispatched, not yet written or dropped
    buffer: dict[int, EpisodeResult] = field(default_factory=dict)
    writer: DatasetWriter | None = None
    kept: int = 0
    returns: list[float] = field(default_factory=list)
    steps: int = 0
    successes: int = 0
    with_success: bool = False
    done: bool = False

    def can_dispatch(self, all_or_successful: str) -> bool:
        if self.done or self.next_dispatch >= self.attempts:
            return False
        if all_or_successful == "all":
            return True
        return self.kept + self.outstanding < self.wanted  # optimistic: all will succeed

    def finished(self) -> bool:
        return self.kept >= self.wanted or self.next_write >= self.attempts


def check_checkpoints(cfg: CollectConfig, tasks: list[str]) -> None:
    from dtmem.collect.rllib_agent import (
        CheckpointError,
        checkpoint_path,
        load_module,
        missing_checkpoints,
        module_path,
    )

    assert cfg.policy.rllib is not None
    for task in tasks:
        missing = missing_checkpoints(cfg.policy.rllib, task)
        if missing:
            path = checkpoint_path(cfg.policy.rllib, task, missing[0])
            if module_path(path).is_dir():  # RLlib's pickles only: says how to convert
                load_module(path)
            raise CheckpointError(
                f"{path}: missing RLlib checkpoint for {task} (policy.rllib.train_missing is false)"
            )


def train_agents(cfg: CollectConfig, tasks: list[str], run: RunHandle, console: Console) -> None:
    """Train (or resume) the RLlib agent of every game whose checkpoints are missing."""
    from dtmem.collect.rllib_agent import IterationSummary, missing_checkpoints, train_agent

    rl = cfg.policy.rllib
    assert rl is not None
    for task in tasks:
        if not missing_checkpoints(rl, task):
            continue
        console.print(
            f"training {rl.algorithm} on {task} to iteration {rl.checkpoint_iterations[-1]}"
        )

        def log(s: IterationSummary, task: str = task) -> None:
            values: dict[str, float] = {
                metrics.collect_metric(task, "agent_env_steps"): s.env_steps
            }
            if math.isfinite(s.episode_return_mean):
                values[metrics.collect_metric(task, "agent_return_mean")] = s.episode_return_mean
            run.log_metrics(values, step=s.iteration)

        train_agent(rl, task, seed=cfg.seed, on_iteration=log)


@contextmanager
def collect_pool(cfg: CollectConfig, ray: Any) -> Iterator[RayPool[CollectChunk]]:
    """``cfg.num_actors`` collection actors on the pool shared with evaluation
    (``dtmem.actor_pool``: a dead actor is replaced and its chunks re-run), killed on exit.
    Actors start in the background: opening the pool early overlaps their start-up (process,
    imports) with the driver's own set-up."""
    cpus = float(ray.cluster_resources().get("CPU", 0.0))
    need = cfg.num_actors * cfg.actor_cpus
    if need > cpus:
        raise CollectError(
            f"num_actors={cfg.num_actors} x actor_cpus={cfg.actor_cpus} needs {need:g} CPUs, "
            f"Ray has {cpus:g}"
        )
    pool: RayPool[CollectChunk] = RayPool(
        _new_actor(cfg), size=cfg.num_actors, per_actor=QUEUED_PER_ACTOR, max_failures=3
    )
    try:
        yield pool
    finally:
        pool.close()


def collect_tasks(
    cfg: CollectConfig,
    tasks: list[str],
    root: Path,
    pool: RayPool[CollectChunk],
    run: RunHandle,
    console: Console,
) -> tuple[dict[str, DatasetSummary], tuple[int, int, float]]:
    """Collect ``tasks`` on ``pool``; returns the summaries and (episodes, env steps,
    seconds of the collection phase)."""
    variants = num_variants(cfg.policy)
    states = {
        t: _TaskState(
            task=t,
            dataset_id=cfg.dataset.dataset_id(t),
            wanted=cfg.episodes_per_task,
            attempts=cfg.attempts_per_task,
            variants=variants,
        )
        for t in tasks
    }
    meter = _Meter(run, console, len(tasks), cfg.episodes_per_task)
    out: dict[str, DatasetSummary] = {}

    def on_result(chunk: CollectChunk, results: list[EpisodeResult]) -> None:
        st = states[chunk.task]
        meter.count(results)
        if st.done:
            return  # extra attempts of a task already complete
        before = st.kept
        for r in results:
            st.buffer[r.plan.index] = r
        _drain(st, cfg, root)
        if st.finished():
            out[st.task] = summary = _commit(st, cfg)
            if summary.episodes < cfg.episodes_per_task:
                console.print(
                    f"[yellow]warning[/]: {st.task}: kept {summary.episodes} of "
                    f"{cfg.episodes_per_task} episodes in {summary.attempted} attempts"
                )
        meter.advance(st.kept - before, len(out))

    try:
        with meter.progress:
            pool.run(_scheduler(cfg, states, variants), on_result)
    except PoolError as exc:
        raise CollectError(str(exc)) from exc
    finally:
        for st in states.values():
            if st.writer is not None and not st.done:
                st.writer.abort()
    return out, meter.finish()


def _new_actor(cfg: CollectConfig) -> Callable[[], Any]:
    """A factory of collection actors for ``cfg``."""
    policy = cfg.policy
    if policy.rllib is not None:  # actors may run in another working directory
        where = str(Path(policy.rllib.checkpoint_dir).expanduser().resolve())
        policy = policy.model_copy(
            update={"rllib": policy.rllib.model_copy(update={"checkpoint_dir": where})}
        )
    cls = remote_class(CollectWorker, cfg.actor_cpus)

    def new_actor() -> Any:
        return cls.remote(
            cfg.suite,
            policy,
            envs_per_actor=cfg.envs_per_actor,
            max_steps=cfg.max_steps,
            env_seed=cfg.seed,
            torch_threads=max(1, int(cfg.actor_cpus)),
        )

    return new_actor


def _scheduler(
    cfg: CollectConfig, states: dict[str, _TaskState], variants: int
) -> Callable[[Hashable | None], CollectChunk | None]:
    """``take(held)``: the next chunk of the task ``held`` if it has one to hand out, else of
    the task with the fewest episodes in flight (so actors spread over tasks and each builds
    few envs); None when none can be handed out now."""

    def chunk_of(st: _TaskState) -> CollectChunk:
        n = min(cfg.episodes_per_chunk, st.attempts - st.next_dispatch)
        if cfg.keep == "successful":
            n = min(n, max(1, st.wanted - st.kept - st.outstanding))
        indices = range(st.next_dispatch, st.next_dispatch + n)
        st.next_dispatch += n
        st.outstanding += n
        plans = plan_episodes(cfg.seed, st.task, indices, total=cfg.episodes_per_task,
                              variants=variants)  # fmt: skip
        return CollectChunk(st.task, tuple(plans))

    def take(held: Hashable | None) -> CollectChunk | None:
        ready = [st for st in states.values() if st.can_dispatch(cfg.keep)]
        if not ready:
            return None
        same = [st for st in ready if st.task == held]
        # else the task with the fewest episodes out (a task per actor where it can)
        return chunk_of(same[0] if same else min(ready, key=lambda st: st.outstanding))

    return take


class _Meter:
    """The progress bar and the throughput metrics of a collection."""

    def __init__(self, run: RunHandle, console: Console, tasks: int, per_task: int) -> None:
        self.run = run
        self.tasks = tasks
        self.progress = Progress(
            TextColumn("[bold]collect[/] {task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("episodes"),
            TextColumn("{task.fields[eps]:.1f} ep/s"),
            TextColumn("{task.fields[sps]:,.0f} steps/s"),
            TimeElapsedColumn(),
            console=console,
        )
        self.bar = self.progress.add_task(
            f"{tasks} datasets", total=tasks * per_task, eps=0.0, sps=0.0
        )
        self.episodes = self.steps = self.rounds = 0
        self.start = self.last_log = time.perf_counter()

    def count(self, results: list[EpisodeResult]) -> None:
        """Every attempted episode counts, kept or not."""
        self.steps += sum(r.episode.num_steps for r in results)
        self.episodes += len(results)
        self.rounds += 1

    def advance(self, kept: int, datasets_done: int) -> None:
        elapsed = time.perf_counter() - self.start
        eps, sps = self.episodes / elapsed, self.steps / elapsed
        self.progress.advance(self.bar, kept)
        desc = f"{datasets_done}/{self.tasks} datasets"
        self.progress.update(self.bar, eps=eps, sps=sps, description=desc)
        if time.perf_counter() - self.last_log >= LOG_EVERY_S:
            self.last_log = time.perf_counter()
            self._log(elapsed, self.rounds)

    def _log(self, elapsed: float, step: int) -> None:
        self.run.log_metrics(
            {
                metrics.COLLECT_EPISODES_PER_S: self.episodes / elapsed,
                metrics.COLLECT_STEPS_PER_S: self.steps / elapsed,
                metrics.COLLECT_EPISODES: self.episodes,
                metrics.COLLECT_STEPS: self.steps,
            },
            step=step,
        )

    def finish(self) -> tuple[int, int, float]:
        elapsed = time.perf_counter() - self.start
        self._log(elapsed, self.rounds + 1)
        return self.episodes, self.steps, elapsed


def _open_writer(st: _TaskState, cfg: CollectConfig, root: Path) -> DatasetWriter:
    observation_space, action_space = dataset_spaces(cfg.suite)
    return DatasetWriter(
        st.dataset_id,
        observation_space=observation_space,
        action_space=action_space,
        env_id=env_id(cfg.suite, st.task),
        task=st.task,
        root=root,
        env_spec=recording_env_spec(env_id(cfg.suite, st.task)),  # for recover_environment()
        author="dtmem collect",
        overwrite=cfg.overwrite,
        description=(
            f"{cfg.suite} {st.task}: {cfg.policy.kind} policy, keep {cfg.keep}, "
            f"collected by dtmem collect"
        ),
        algorithm_name=f"dtmem-collect/{cfg.policy.kind}",
    )


def _drain(st: _TaskState, cfg: CollectConfig, root: Path) -> None:
    """Write (or drop) the buffered episodes that continue the index sequence."""
    while not st.finished() and st.next_write in st.buffer:
        r = st.buffer.pop(st.next_write)
        st.next_write += 1
        st.outstanding -= 1
        st.with_success = r.success is not None
        st.successes += bool(r.success)
        if cfg.keep == "successful" and not r.success:
            continue
        if st.writer is None:
            st.writer = _open_writer(st, cfg, root)
        st.writer.add_episode(r.episode)
        st.returns.append(r.episode_return)
        st.steps += r.episode.num_steps
        st.kept += 1


def _commit(st: _TaskState, cfg: CollectConfig) -> DatasetSummary:
    """Commit the task's dataset; its summary also goes into the dataset's metadata."""
    st.buffer.clear()
    if st.writer is None or st.kept == 0:
        raise CollectError(
            f"{st.task}: no episode kept out of {st.next_write} attempted (keep={cfg.keep})"
        )
    returns = np.asarray(st.returns)
    summary = DatasetSummary(
        dataset_id=st.dataset_id,
        task=st.task,
        status="written",
        episodes=st.kept,
        attempted=st.next_write,
        steps=st.steps,
        return_mean=float(returns.mean()),
        return_min=float(returns.min()),
        return_max=float(returns.max()),
        success_rate=st.successes / st.next_write if st.with_success else None,
        content_hash="",
    )
    st.writer.set_metadata(
        collect={
            "fingerprint": fingerprint(cfg, st.task),
            "config": cfg.model_dump(mode="json"),
            # without status and hash: a reused dataset's come from its own metadata
            "summary": {
                k: v for k, v in summary.row().items() if k not in ("status", "content_hash")
            },
        }
    )
    info = st.writer.commit()
    st.done = True
    summary.content_hash = info.content_hash or ""
    return summary


def report(summaries: list[DatasetSummary], run: RunHandle, console: Console, root: Path) -> None:
    """Print the summary table; log it (CSV), per-task metrics and the hashes to MLflow."""
    namespace = summaries[0].dataset_id.rsplit("/", 1)[0] if summaries else ""
    table = Table(title=f"datasets in {namespace}/ under {root}", box=box.SIMPLE_HEAD)
    for col in ("dataset", "status", "episodes", "steps", "return mean", "min", "max",
                "success", "hash"):  # fmt: skip
        table.add_column(col, justify="left" if col in ("dataset", "status") else "right")
    tags: dict[str, str] = {}
    rows = []
    for s in summaries:
        episodes = str(s.episodes) if s.attempted == s.episodes else f"{s.episodes}/{s.attempted}"
        table.add_row(
            s.dataset_id.rsplit("/", 1)[-1],
            s.status,
            episodes,
            f"{s.steps:,}",
            f"{s.return_mean:.1f}",
            f"{s.return_min:.1f}",
            f"{s.return_max:.1f}",
            "-" if s.success_rate is None else f"{s.success_rate:.2f}",
            s.content_hash[:8],
        )
        info = DatasetInfo(s.dataset_id, root / s.dataset_id, None, s.task, s.episodes, s.steps,
                           s.content_hash)  # fmt: skip
        tags.update(info.mlflow_tags())
        rows.append(s.row())
        values: dict[str, float] = {
            metrics.collect_metric(s.task, "episodes"): s.episodes,
            metrics.collect_metric(s.task, "steps"): s.steps,
            metrics.collect_metric(s.task, "return_mean"): s.return_mean,
        }
        if s.success_rate is not None:
            values[metrics.collect_metric(s.task, "success_rate")] = s.success_rate
        run.log_metrics(values, step=0)
    console.print(table)
    tags["collect.datasets"] = ",".join(s.dataset_id for s in summaries)
    run.set_tags(tags)
    run.log_table(rows, "collect_summary.csv")
