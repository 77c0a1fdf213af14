"""The numbers of the report: the measures and their column titles, ``Cell`` (one number
with its bootstrap interval, seeds and runs), and how node runs become cells: the score each
evaluation logged (success rate, or the human-normalised score for Atari), samples keyed by
(arm, fine-tune mode, measure) -> task -> seed, forgetting against the pretrained evaluation
of the same arm and seed, the scripted experts' reference row, and per-task and aggregated
cells with a stratified bootstrap interval over seeds within tasks, noting every gap.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from dtmem import metrics as M
from dtmem.experiment import EVAL_KINDS
from dtmem.stats import Statistic, stratified_bootstrap_ci

if TYPE_CHECKING:
    from dtmem.experiment.report_runs import _Node

TRAINABLE_PARAM = "model.params_trainable"  # dtmem.training.finish.log_model_size
AGGREGATE = "all tasks"
# The reference row beside the pretrained models (issue 13's sanity gate): the success rate
# of the scripted (noisy) experts whose episodes are the training data, as each ``collect``
# node run logged it (``collect/<task>/success_rate``, dtmem.collect.datasets.report).
EXPERTS_ARM = "data (scripted experts)"
EXPERTS_ROW = (EXPERTS_ARM, "none")

# measure -> its column title; the order of the table's columns.
MEASURES: dict[str, str] = {
    "finetuned": "after fine-tuning",
    "zero_shot": "zero-shot",
    "pretrained": "pretraining tasks",
    "forgetting": "forgetting",
    "trainable_params": "trainable params",
    "finetune_wall_s": "fine-tune wall (s)",
}
SCORE_MEASURES = ("finetuned", "zero_shot", "pretrained", "forgetting")


@dataclass(frozen=True)
class Cell:
    """One number of the report: ``measure`` of row (``arm``, ``ft_mode``) on ``task`` (or
    ``AGGREGATE``), with its bootstrap interval; ``point`` is None where nothing was measured."""

    arm: str
    ft_mode: str
    measure: str
    task: str
    statistic: Statistic
    point: float | None
    low: float | None
    high: float | None
    seeds: tuple[str, ...]  # the seeds it rests on (union over tasks for an aggregate)
    n_tasks: int
    run_ids: tuple[str, ...]

    @property
    def n_seeds(self) -> int:
        return len(self.seeds)


@dataclass(frozen=True)
class _Bootstrap:
    confidence: float
    num_resamples: int
    seed: int


@dataclass(frozen=True)
class _Sample:
    value: float
    run_ids: tuple[str, ...]


# (arm, ft_mode, measure) -> task -> seed -> sample
_Samples = dict[tuple[str, str, str], dict[str, dict[str, _Sample]]]


def _per_task(node: _Node, prefix: str, name: str) -> dict[str, float]:
    """task -> this run's ``<prefix>/<task>/<name>``."""
    out = {}
    for key, value in node.metrics.items():
        parts = key.split("/")
        if len(parts) == 3 and parts[0] == prefix and parts[2] == name:
            out[parts[1]] = float(value)
    return out


def _scores(node: _Node, score_name: str) -> dict[str, float]:
    """task -> this evaluation run's ``eval/<task>/<score_name>``."""
    return _per_task(node, "eval", score_name)


def _score_name(nodes: Iterable[_Node]) -> tuple[str, Statistic]:
    """Success rate with the mean (Meta-World), or, where evaluations carry no success rate,
    the human-normalised score with the IQM (Atari, as the paper and rliable report)."""
    evals = [n for n in nodes if n.eval_kind in EVAL_KINDS]
    if any(_scores(n, "success_rate") for n in evals):
        return "success_rate", "mean"
    if any(_scores(n, "score_normalized") for n in evals):
        return "score_normalized", "iqm"
    return "success_rate", "mean"


def _collected(node: _Node, name: str) -> dict[str, float]:
    """task -> this collect run's ``collect/<task>/<name>``."""
    return _per_task(node, "collect", name)


def _row_order(row: tuple[str, str]) -> tuple[bool, tuple[str, str]]:
    """Rows sorted by name, the experts' reference row last."""
    return (row == EXPERTS_ROW, row)


def _experts(
    nodes: Sequence[_Node], tasks: set[str], score_name: str, samples: _Samples, notes: list[str]
) -> None:
    """Add the experts' row to the ``pretrained`` measure: each collect run's success rate on
    the pretraining ``tasks``, one sample per (task, collect node). No collect node (datasets
    given by id), no success rate (Atari) or no pretrained evaluation: no row."""
    if score_name != "success_rate":
        return
    for n in nodes:
        if n.stage != "collect":
            continue
        rates = {t: v for t, v in _collected(n, "success_rate").items() if t in tasks}
        for task, value in sorted(rates.items()):
            samples[(*EXPERTS_ROW, "pretrained")][task][n.node] = _Sample(value, (n.run_id,))
        if rates:
            kept = sorted({int(v) for t, v in _collected(n, "episodes").items() if t in rates})
            size = "–".join(str(k) for k in sorted({kept[0], kept[-1]})) if kept else "?"
            notes.append(
                f"{EXPERTS_ARM}: success rate of the scripted experts (with their action "
                f"noise) in the episodes {n.node} (run {n.run_id}) ran to collect the data, on "
                f"{len(rates)} of the {len(tasks)} pretraining tasks ({size} episodes kept "
                "per task); n counts collect runs, and one gives no interval"
            )


def _collect(nodes: Sequence[_Node], score_name: str, notes: list[str]) -> _Samples:
    samples: _Samples = defaultdict(lambda: defaultdict(dict))

    def put(arm: str, mode: str, measure: str, task: str, seed: str, sample: _Sample) -> None:
        slot = samples[(arm, mode, measure)][task]
        if seed in slot:
            notes.append(
                f"{arm}/{mode} {measure} {task} seed {seed}: two finished runs "
                f"({', '.join(slot[seed].run_ids)} and {', '.join(sample.run_ids)}); "
                "the later one is used"
            )
        slot[seed] = sample

    pretrained = {
        (n.arm, n.seed): n for n in nodes if n.eval_kind == "pretrained"
    }  # nodes come sorted by start time: a later run replaces an earlier one
    for n in nodes:
        if n.eval_kind in ("finetuned", "zero_shot", "pretrained"):
            for task, value in _scores(n, score_name).items():
                put(n.arm, n.ft_mode, n.eval_kind, task, n.seed, _Sample(value, (n.run_id,)))
        elif n.eval_kind == "forgetting":
            base = pretrained.get((n.arm, n.seed))
            after = _scores(n, score_name)
            before = _scores(base, score_name) if base is not None else {}
            shared = sorted(set(after) & set(before))
            if not shared:
                notes.append(
                    f"{n.arm}/{n.ft_mode} forgetting {n.task or '?'} seed {n.seed}: no "
                    f"pretrained evaluation of arm {n.arm} seed {n.seed} on the same tasks "
                    f"(run {n.run_id}); left out"
                )
                continue
            assert base is not None
            drop = sum(after[t] - before[t] for t in shared) / len(shared)
            put(
                n.arm,
                n.ft_mode,
                "forgetting",
                n.task or "?",
                n.seed,
                _Sample(drop, (n.run_id, base.run_id)),
            )
        elif n.stage == "finetune":
            count = n.metrics.get(M.FINETUNE_TRAINABLE_PARAMS)  # older runs: a metric
            if TRAINABLE_PARAM in n.params:
                count = float(n.params[TRAINABLE_PARAM])
            if count is not None:
                put(
                    n.arm,
                    n.ft_mode,
                    "trainable_params",
                    n.task,
                    n.seed,
                    _Sample(float(count), (n.run_id,)),
                )
            if n.end_ms is not None:
                wall = (n.end_ms - n.start_ms) / 1000.0
                put(n.arm, n.ft_mode, "finetune_wall_s", n.task, n.seed, _Sample(wall, (n.run_id,)))
    on_train = {t for (_, _, m), by_task in samples.items() if m == "pretrained" for t in by_task}
    _experts(nodes, on_train, score_name, samples, notes)
    return samples


def _cell(
    key: tuple[str, str, str],
    task: str,
    by_task: Mapping[str, Mapping[str, _Sample]],
    statistic: Statistic,
    boot: _Bootstrap,
) -> Cell:
    arm, mode, measure = key
    if not by_task:
        return Cell(arm, mode, measure, task, statistic, None, None, None, (), 0, ())
    values = {t: [s.value for _, s in sorted(by_seed.items())] for t, by_seed in by_task.items()}
    ci = stratified_bootstrap_ci(
        values,
        statistic,
        num_resamples=boot.num_resamples,
        confidence=boot.confidence,
        seed=boot.seed,
    )
    seeds = sorted({s for by_seed in by_task.values() for s in by_seed}, key=_seed_order)
    run_ids = tuple(
        dict.fromkeys(
            r
            for t in sorted(by_task)
            for _, sample in sorted(by_task[t].items())
            for r in sample.run_ids
        )
    )
    return Cell(
        arm,
        mode,
        measure,
        task,
        statistic,
        ci.point,
        ci.low,
        ci.high,
        tuple(seeds),
        len(by_task),
        run_ids,
    )


def _seed_order(seed: str) -> tuple[int, Any]:
    return (0, int(seed)) if seed.lstrip("-").isdigit() else (1, seed)


def _cells(
    samples: _Samples, statistic: Statistic, boot: _Bootstrap, notes: list[str]
) -> list[Cell]:
    """Per task and aggregated cells for every (row, measure) with data; missing ones noted."""
    cells = []
    rows = sorted({(arm, mode) for arm, mode, _ in samples}, key=_row_order)
    for measure in MEASURES:
        stat: Statistic = statistic if measure in SCORE_MEASURES else "mean"
        keys = [(arm, mode, measure) for arm, mode in rows if (arm, mode, measure) in samples]
        tasks = sorted({t for k in keys for t in samples[k]})
        models = [k for k in keys if k[:2] != EXPERTS_ROW]  # the experts' n counts collect runs
        most_seeds = max((len(s) for k in models for s in samples[k].values()), default=0)
        for key in keys:
            by_task = samples[key]
            label = f"{key[0]}/{key[1]} {MEASURES[measure]}"
            for task in tasks:
                one = {task: by_task[task]} if task in by_task else {}
                cells.append(_cell(key, task, one, stat, boot))
                if task not in by_task:
                    why = "no finished run" if key in models else "no collect run"
                    notes.append(f"{label} on {task}: {why} (a dash in the table)")
                elif key in models and len(by_task[task]) < most_seeds:
                    notes.append(
                        f"{label} on {task}: rests on {len(by_task[task])} of {most_seeds} seeds"
                    )
            if len(by_task) < len(tasks):
                notes.append(
                    f"{label}, all tasks: aggregated over the {len(by_task)} of "
                    f"{len(tasks)} tasks that have runs"
                )
            cells.append(_cell(key, AGGREGATE, by_task, stat, boot))
    if any(c.n_seeds == 1 and c.measure in SCORE_MEASURES and c.arm != EXPERTS_ARM for c in cells):
        notes.append(
            "a cell with n=1 rests on one seed: there is nothing to resample, so its interval "
            "is the point itself, not a measure of uncertainty"
        )
    return cells
