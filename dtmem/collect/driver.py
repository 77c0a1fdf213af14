"""The driver of ``dtmem collect`` (``pipelines/collect.py``): the RLlib agents' checkpoints
(``check_checkpoints``, ``train_agents``), the collection actors (``collect_pool``, on the
actor pool shared with evaluation, ``dtmem.actor_pool``) and the scheduling of episode chunks
on them (``collect_tasks``): a free actor takes the next chunk of the task whose envs it
holds, else of the task with the fewest episodes out; each chunk's episodes go to the task's
writer (``dtmem.collect.datasets``) in index order. ``Timeline`` says where the call's wall
time went (``CollectResult.phases``).

Ray is entered by ``pipelines/collect.py`` through ``dtmem.ray_session``; the workers come
from ``dtmem.collect.actors``. The names ``pipelines/collect.py`` uses from
``dtmem.collect.datasets`` are importable from here too.
"""

from __future__ import annotations

import math
import statistics
import time
from collections.abc import Callable, Hashable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
)

from dtmem import metrics
from dtmem.actor_pool import PoolError, RayPool, remote_class
from dtmem.collect.actors import (
    ChunkResult,
    ChunkTiming,
    CollectChunk,
    CollectWorker,
    EpisodeResult,
)
from dtmem.collect.datasets import (
    CollectError,
    DatasetSummary,
    TaskState,
    commit,
    drain,
    existing_summary,
    fingerprint,
    report,
)
from dtmem.collect.policies import num_variants, plan_episodes
from dtmem.config.collect import CollectConfig
from dtmem.tracking import RunHandle

__all__ = [
    "CollectError",
    "CollectResult",
    "DatasetSummary",
    "Timeline",
    "check_checkpoints",
    "collect_pool",
    "collect_tasks",
    "existing_summary",
    "fingerprint",
    "report",
    "train_agents",
]

QUEUED_PER_ACTOR = 2  # chunks queued on each actor, so it never waits for the driver
LOG_EVERY_S = 10.0  # throughput metrics at most this often


@dataclass(frozen=True)
class CollectResult:
    """What ``collect`` did: one summary per task (task order), the MLflow run, the
    throughput of the collection phase (actors started to last episode in; env steps of
    every attempted episode, including dropped ones; zeros when everything was reused), and
    where the call's wall time went (``Timeline.breakdown``)."""

    datasets: list[DatasetSummary]
    run_id: str
    episodes: int
    env_steps: int
    seconds: float
    phases: dict[str, float] = field(default_factory=dict)

    @property
    def env_steps_per_s(self) -> float:
        return self.env_steps / self.seconds if self.seconds > 0 else 0.0


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


@dataclass
class _WorkerTime:
    ready_at: float
    envs: float = 0.0
    episodes: float = 0.0
    cpu: float = 0.0


@dataclass
class Timeline:
    """Where one ``run_collect`` call's wall time goes: stamps (``time.time()``, the clock
    the actors stamp their ``ChunkTiming`` with) and sums, filled in as the call runs."""

    started: float  # the call began
    first_dispatch: float | None = None  # the first chunk handed out
    collected: float | None = None  # the last chunk's episodes in
    write: float = 0.0  # the driver writing episodes (and dropping unsuccessful ones)
    commit: float = 0.0  # the driver committing datasets
    workers: dict[str, _WorkerTime] = field(default_factory=dict)

    def add(self, timing: ChunkTiming) -> None:
        w = self.workers.setdefault(timing.worker, _WorkerTime(timing.ready_at))
        w.envs += timing.env_seconds
        w.episodes += timing.episodes_seconds
        w.cpu += timing.cpu_seconds

    def breakdown(self, ended: float) -> dict[str, float]:
        """Seconds per phase, ``total`` the whole call. Per worker the phases follow one
        another and sum to ``total``: ``actor_start`` (call start to the worker ready: Ray,
        its process, imports), ``envs`` (building envs and policies), ``episodes``,
        ``actor_idle`` (no chunk to run: round trips, and the tail while others finish),
        ``finish`` (last episode in to the call's end: summary, MLflow, actors stopped);
        each is the mean over the workers that ran chunks. ``actor_cpu``: their CPU seconds
        over ``envs`` and ``episodes`` (mean), below those where the machine runs more than
        it has cores. Beside them, in the driver while the workers run: ``setup`` (call start
        to the first chunk handed out: checks, the MLflow run), ``write`` and ``commit``."""
        total = ended - self.started
        if not self.workers or self.collected is None or self.first_dispatch is None:
            return {"total": total}
        ws = list(self.workers.values())
        envs = statistics.fmean(w.envs for w in ws)
        episodes = statistics.fmean(w.episodes for w in ws)
        start = statistics.fmean(w.ready_at - self.started for w in ws)
        finish = ended - self.collected
        return {
            "setup": self.first_dispatch - self.started,
            "actor_start": start,
            "envs": envs,
            "episodes": episodes,
            "actor_idle": total - start - envs - episodes - finish,
            "finish": finish,
            "actor_cpu": statistics.fmean(w.cpu for w in ws),
            "write": self.write,
            "commit": self.commit,
            "total": total,
        }


def collect_tasks(
    cfg: CollectConfig,
    tasks: list[str],
    root: Path,
    pool: RayPool[CollectChunk],
    run: RunHandle,
    console: Console,
    timeline: Timeline | None = None,
) -> tuple[dict[str, DatasetSummary], tuple[int, int, float]]:
    """Collect ``tasks`` on ``pool``; returns the summaries and (episodes, env steps,
    seconds of the collection phase). Stamps and sums go to ``timeline``."""
    clock = timeline if timeline is not None else Timeline(time.time())
    variants = num_variants(cfg.policy)
    states = {
        t: TaskState(
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

    def on_result(chunk: CollectChunk, result: ChunkResult) -> None:
        clock.collected = time.time()
        clock.add(result.timing)
        st = states[chunk.task]
        meter.count(result.episodes)
        if st.done:
            return  # extra attempts of a task already complete
        before = st.kept
        for r in result.episodes:
            st.buffer[r.plan.index] = r
        t0 = time.perf_counter()
        drain(st, cfg, root)
        t1 = time.perf_counter()
        clock.write += t1 - t0
        if st.finished():
            out[st.task] = summary = commit(st, cfg)
            clock.commit += time.perf_counter() - t1
            if summary.episodes < cfg.episodes_per_task:
                console.print(
                    f"[yellow]warning[/]: {st.task}: kept {summary.episodes} of "
                    f"{cfg.episodes_per_task} episodes in {summary.attempted} attempts"
                )
        meter.advance(st.kept - before, len(out))

    try:
        with meter.progress:
            pool.run(_scheduler(cfg, states, variants, clock), on_result)
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
    cfg: CollectConfig, states: dict[str, TaskState], variants: int, clock: Timeline
) -> Callable[[Hashable | None], CollectChunk | None]:
    """``take(held)``: the next chunk of the task ``held`` if it has one to hand out, else of
    the task with the fewest episodes in flight (so actors spread over tasks and each builds
    few envs); None when none can be handed out now.

    Near the best it can be (``test_scheduler_finishes_two_actors_near_the_bound``): on this
    machine's costs (actor start 0.65 s, env build 1.25 s first and 0.85 s after, reach /
    push episodes 0.35 / 0.85 s), 2 tasks x 8 episodes on 2 actors finish in 7.25 s against
    a bound of 7.13 s (start, first build, then half of all episodes and of the one extra
    build that lets the reach actor help with push). Tried and not kept: holding queued
    chunks back at the tail and helping only where a task's measured episodes outweigh an
    env build (the same at 2 x 8 with noisy episode times, 17% slower at 2 x 2)."""

    def chunk_of(st: TaskState) -> CollectChunk:
        n = min(cfg.episodes_per_chunk, st.attempts - st.next_dispatch)
        if cfg.keep == "successful":
            n = min(n, max(1, st.wanted - st.kept - st.outstanding))
        indices = range(st.next_dispatch, st.next_dispatch + n)
        st.next_dispatch += n
        st.outstanding += n
        plans = plan_episodes(cfg.seed, st.task, indices, total=cfg.episodes_per_task,
                              variants=variants)  # fmt: skip
        if clock.first_dispatch is None:
            clock.first_dispatch = time.time()
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
