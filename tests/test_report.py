"""The experiment report, from fake node runs in a temporary MLflow store, at odd sizes:
3 seeds x 5 held-out tasks, 2 pretraining tasks, rows with a missing seed, a missing task,
a failed run, a node reused as cached from an earlier experiment run, and a collect node
(also cached) whose scripted experts' success rates sit beside the pretrained models'."""

from __future__ import annotations

import json
import shutil
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest

from dtmem import metrics as M
from dtmem.experiment import (
    NODES_ARTIFACT,
    STAGE,
    TAG_ARM,
    TAG_EVAL_KIND,
    TAG_EXPERIMENT,
    TAG_EXPERIMENT_RUN,
    TAG_FT_MODE,
    TAG_NODE,
    TAG_SEED,
    TAG_STAGE,
    TAG_TASK,
)
from dtmem.experiment.report import EXPERTS_ARM, ReportError, build_report
from dtmem.stats import iqm, stratified_bootstrap_ci
from dtmem.sweep.tracking import TRIAL_STATUS_TAG

SEEDS = ("0", "1", "2")
HELD_OUT = ("bin-picking", "box-close", "door-lock", "door-unlock", "hand-insert")
TRAIN_TASKS = ("reach", "push")
SIDE_TASKS = HELD_OUT[:2]  # zero-shot and forgetting are measured on these only (fewer runs)
ROWS = (("dtmem", "lora"), ("dtmem", "full"), ("dt", "lora"))
MISSING_SEED = ("dt", "lora", "hand-insert", "2")  # no finetuned evaluation for this seed
MISSING_TASK = ("dtmem", "full", "door-lock")  # no finetuned evaluation at all (one failed)
CACHED = ("dt", "lora", "bin-picking", "0")  # fine-tune + evaluation reused from a run before
EXPERTS = (EXPERTS_ARM, "none")  # the scripted experts' reference row


@dataclass
class Store:
    """The fake study: the store, the parent run id, and what each cell must show."""

    uri: str
    parent: str
    # (arm, mode, measure, task) -> seed -> (value, run ids)
    truth: dict[tuple[str, str, str, str], dict[str, tuple[float, tuple[str, ...]]]] = field(
        default_factory=dict
    )
    cached_runs: set[str] = field(default_factory=set)
    failed_run: str = ""
    stopped_trial: str = ""

    def values(self, arm: str, mode: str, measure: str, task: str) -> dict[str, float]:
        return {s: v for s, (v, _) in self.truth[(arm, mode, measure, task)].items()}


class _Maker:
    def __init__(self, uri: str, experiment: str) -> None:
        from mlflow.tracking import MlflowClient

        self.client = MlflowClient(tracking_uri=uri)
        self.exp = self.client.create_experiment(experiment)
        self.clock = 1_700_000_000_000

    def run(
        self,
        tags: dict[str, str],
        metrics: dict[str, float] | None = None,
        *,
        wall_s: float = 1.0,
        status: str = "FINISHED",
        history: list[tuple[int, float]] | None = None,
        params: dict[str, str] | None = None,
    ) -> str:
        from mlflow.entities import Metric, Param

        self.clock += 10_000
        run_id = self.client.create_run(self.exp, start_time=self.clock, tags=tags).info.run_id
        batch = [Metric(k, v, self.clock, 0) for k, v in (metrics or {}).items()]
        batch += [Metric(M.TRAIN_LOSS, v, self.clock, step) for step, v in history or []]
        logged = [Param(k, v) for k, v in (params or {}).items()]
        if batch or logged:
            self.client.log_batch(run_id, metrics=batch, params=logged)
        self.client.set_terminated(run_id, status, end_time=self.clock + int(wall_s * 1000))
        return run_id


def _success(task: str) -> str:
    return M.eval_metric(task, "success_rate")


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> Iterator[Store]:
    # The store lives in memory-backed /dev/shm where there is one: each of the ~500 MLflow
    # writes below is a sqlite commit, and an fsync per commit made this fixture 3x slower.
    shm = Path("/dev/shm")
    where = Path(tempfile.mkdtemp(dir=shm)) if shm.is_dir() else tmp_path_factory.mktemp("db")
    try:
        yield _make_store(f"sqlite:///{where / 'mlflow.db'}")
    finally:
        shutil.rmtree(where, ignore_errors=True)


def _make_store(uri: str) -> Store:
    mk = _Maker(uri, "study")
    rng = np.random.default_rng(0)
    old_parent = mk.run({TAG_STAGE: STAGE, TAG_EXPERIMENT: "laptop"})
    parent = mk.run({TAG_STAGE: STAGE, TAG_EXPERIMENT: "laptop"})
    st = Store(uri, parent)
    listed: dict[str, dict[str, object]] = {}

    def node(name: str, labels: dict[str, str], made_by: str = parent, **kw) -> str:
        tags = {TAG_NODE: name, TAG_EXPERIMENT: "laptop", TAG_EXPERIMENT_RUN: made_by}
        tags.update({k: v for k, v in labels.items() if v})
        run_id = mk.run(tags, **kw)
        listed[name] = {"state": "cached" if made_by != parent else "ran", "run_id": run_id}
        return run_id

    def record(key: tuple[str, str, str, str], seed: str, value: float, *runs: str) -> None:
        st.truth.setdefault(key, {})[seed] = (value, runs)

    # The data, collected by an earlier experiment run on every task (held-out ones too) and
    # reused: its experts' success rate counts on the pretraining tasks only.
    rates = {t: round(float(rng.uniform(0.5, 1.0)), 3) for t in (*TRAIN_TASKS, *HELD_OUT)}
    collect = node(
        "collect/ml10",
        {TAG_STAGE: "collect"},
        old_parent,
        metrics={
            **{M.collect_metric(t, "success_rate"): v for t, v in rates.items()},
            **{M.collect_metric(t, "episodes"): 7.0 for t in rates},
            M.COLLECT_SUCCESS_RATE: 0.0,  # the driver's per-round figure: not a task
        },
    )
    st.cached_runs.add(collect)
    for t in TRAIN_TASKS:
        record((*EXPERTS, "pretrained", t), "collect/ml10", rates[t], collect)
    for arm in ("dtmem", "dt"):
        for seed in SEEDS:
            common = {TAG_ARM: arm, TAG_SEED: seed}
            node(
                f"pretrain/{arm}/s{seed}",
                {TAG_STAGE: "pretrain", **common},
                history=[(1, 2.0 + rng.uniform()), (2, 1.5), (3, 1.0 + int(seed))],
            )
            pre_scores = {t: float(rng.uniform()) for t in TRAIN_TASKS}
            pre = node(
                f"evaluate/{arm}/s{seed}/pretrained",
                {TAG_STAGE: "evaluate", **common, TAG_FT_MODE: "none", TAG_EVAL_KIND: "pretrained"},
                metrics={_success(t): v for t, v in pre_scores.items()},
            )
            for t, v in pre_scores.items():
                record((arm, "none", "pretrained", t), seed, v, pre)
            for task in SIDE_TASKS:
                v = float(rng.uniform(0, 0.2))
                zs = node(
                    f"evaluate/{arm}/s{seed}/{task}/zero_shot",
                    {
                        TAG_STAGE: "evaluate",
                        **common,
                        TAG_TASK: task,
                        TAG_FT_MODE: "none",
                        TAG_EVAL_KIND: "zero_shot",
                    },
                    metrics={_success(task): v, M.eval_metric(task, "return_mean"): 100.0},
                )
                record((arm, "none", "zero_shot", task), seed, v, zs)
            for a, mode in ROWS:
                if a != arm:
                    continue
                labels = {**common, TAG_FT_MODE: mode}
                for task in HELD_OUT:
                    made_by = old_parent if (arm, mode, task, seed) == CACHED else parent
                    name = f"{arm}/s{seed}/{task}/{mode}"
                    params = 1234 if mode == "lora" else 98765
                    wall = 3.0 + int(seed)
                    ft = node(
                        f"finetune/{name}",
                        {TAG_STAGE: "finetune", **labels, TAG_TASK: task},
                        made_by,
                        params={"model.params_trainable": str(params)},
                        wall_s=wall,
                        history=[(1, 0.9), (2, 0.5)],
                    )
                    record((arm, mode, "trainable_params", task), seed, params, ft)
                    record((arm, mode, "finetune_wall_s", task), seed, wall, ft)
                    ev_labels = {TAG_STAGE: "evaluate", **labels, TAG_TASK: task}
                    if (arm, mode, task) == MISSING_TASK:
                        if seed == "0":
                            st.failed_run = node(
                                f"evaluate/{name}/finetuned",
                                {**ev_labels, TAG_EVAL_KIND: "finetuned"},
                                status="FAILED",
                            )
                    elif (arm, mode, task, seed) != MISSING_SEED:
                        v = float(rng.uniform(0.3, 1.0))
                        ev = node(
                            f"evaluate/{name}/finetuned",
                            {**ev_labels, TAG_EVAL_KIND: "finetuned"},
                            made_by,
                            metrics={_success(task): v},
                        )
                        record((arm, mode, "finetuned", task), seed, v, ev)
                        if made_by != parent:
                            st.cached_runs |= {ft, ev}
                    if task not in SIDE_TASKS:
                        continue
                    after = {t: pre_scores[t] - float(rng.uniform(0, 0.3)) for t in TRAIN_TASKS}
                    fg = node(
                        f"evaluate/{name}/forgetting",
                        {**ev_labels, TAG_EVAL_KIND: "forgetting"},
                        metrics={_success(t): v for t, v in after.items()},
                    )
                    drop = np.mean([after[t] - pre_scores[t] for t in TRAIN_TASKS])
                    record((arm, mode, "forgetting", task), seed, float(drop), fg, pre)
    # A sweep trial its scheduler stopped early: KILLED, and the note says why.
    st.stopped_trial = mk.run(
        {TAG_NODE: "sweep/slots", TAG_EXPERIMENT_RUN: parent, TRIAL_STATUS_TAG: "early_stopped"},
        status="KILLED",
    )
    mk.client.log_text(parent, json.dumps(listed), NODES_ARTIFACT)
    # A node of another experiment run must not leak in.
    mk.run(
        {
            TAG_STAGE: "evaluate",
            TAG_EXPERIMENT_RUN: old_parent,
            TAG_ARM: "dtmem",
            TAG_SEED: "9",
            TAG_FT_MODE: "lora",
            TAG_TASK: "box-close",
            TAG_EVAL_KIND: "finetuned",
        },
        metrics={_success("box-close"): 0.0},
    )
    return st


@pytest.fixture(scope="module")
def report(store, tmp_path_factory):
    return build_report(store.uri, store.parent, tmp_path_factory.mktemp("out") / "laptop")


def test_cells_equal_the_runs_they_name(report, store):
    for (arm, mode, measure, task), by_seed in store.truth.items():
        cell = report.cell(arm, mode, measure, task)
        values = [v for _, (v, _) in sorted(by_seed.items())]
        assert cell.statistic == "mean"
        assert cell.point == pytest.approx(np.mean(values))
        assert cell.seeds == tuple(sorted(by_seed))
        assert cell.run_ids == tuple(r for _, (_, runs) in sorted(by_seed.items()) for r in runs)
        assert cell.low is not None and cell.high is not None
        assert cell.low - 1e-12 <= cell.point <= cell.high + 1e-12


def test_aggregate_is_the_stratified_bootstrap_over_seeds_within_tasks(report, store):
    by_task = {t: store.values("dtmem", "lora", "finetuned", t) for t in HELD_OUT}
    cell = report.cell("dtmem", "lora", "finetuned")
    expected = stratified_bootstrap_ci({t: list(v.values()) for t, v in by_task.items()})
    assert (cell.point, cell.low, cell.high) == pytest.approx(
        (expected.point, expected.low, expected.high)
    )
    assert (cell.n_seeds, cell.n_tasks, len(cell.run_ids)) == (3, 5, 15)
    assert cell.point == pytest.approx(
        np.mean([np.mean(list(v.values())) for v in by_task.values()])
    )
    assert cell.low < cell.point < cell.high
    # forgetting: fine-tuned minus pretrained, mean over pretraining tasks, per seed (< 0 here)
    fg = report.cell("dtmem", "full", "forgetting")
    assert fg.point is not None and fg.high is not None and fg.high < 0
    assert report.cell("dt", "lora", "trainable_params").point == 1234
    assert report.cell("dtmem", "full", "trainable_params").point == 98765
    assert report.cell("dtmem", "lora", "finetune_wall_s").point == pytest.approx(4.0)  # 3,4,5


def test_missing_cells_are_dashes_with_notes(report, store):
    arm, mode, task = MISSING_TASK
    gap = report.cell(arm, mode, "finetuned", task)
    assert (gap.point, gap.low, gap.n_seeds, gap.run_ids) == (None, None, 0, ())
    assert report.cell(arm, mode, "finetuned").n_tasks == 4
    thin = report.cell(*MISSING_SEED[:2], "finetuned", MISSING_SEED[2])
    assert thin.seeds == ("0", "1")
    notes = "\n".join(report.notes)
    assert f"{arm}/{mode} after fine-tuning on {task}: no finished run" in notes
    assert "dt/lora after fine-tuning on hand-insert: rests on 2 of 3 seeds" in notes
    assert "aggregated over the 4 of 5 tasks" in notes
    assert f"run {store.failed_run}" in notes and "FAILED: not counted" in notes
    assert (
        f"run {store.stopped_trial} (sweep/slots) is KILLED, a sweep trial its scheduler "
        "stopped early: not counted"
    ) in notes
    with pytest.raises(KeyError):
        report.cell("dtmem", "lora", "zero_shot")  # not measured for a fine-tuned row


def test_cached_nodes_count_and_are_listed(report, store):
    assert {run for _, _, run in report.cached} == store.cached_runs
    arm, mode, task, _ = CACHED
    assert report.cell(arm, mode, "finetuned", task).seeds == SEEDS
    assert "## Nodes skipped as cached" in report.markdown
    assert "9" not in report.cell("dtmem", "lora", "finetuned", "box-close").seeds


def test_scripted_experts_beside_the_pretrained_models(report, store):
    train = {t: store.values(*EXPERTS, "pretrained", t)["collect/ml10"] for t in TRAIN_TASKS}
    cell = report.cell(*EXPERTS, "pretrained")
    assert cell.point == pytest.approx(np.mean(list(train.values())))  # the models' aggregate
    assert (cell.low, cell.high) == (cell.point, cell.point)  # one collect run per task
    assert (cell.seeds, cell.n_tasks) == (("collect/ml10",), 2)
    for task in HELD_OUT:  # collected, but not a pretraining task
        with pytest.raises(KeyError):
            report.cell(*EXPERTS, "pretrained", task)
    with pytest.raises(KeyError):
        report.cell(*EXPERTS, "finetuned")
    notes = "\n".join(report.notes)
    assert f"{EXPERTS_ARM}: success rate of the scripted experts" in notes
    assert "on 2 of the 2 pretraining tasks (7 episodes kept per task)" in notes
    assert EXPERTS_ARM + "/none pretraining tasks on" not in notes  # not "1 of 3 seeds"
    lines = report.markdown.splitlines()
    rows = [i for i, line in enumerate(lines) if line.startswith(f"| {EXPERTS_ARM} | none |")]
    assert len(rows) == 2  # the all-tasks table and the pretrained per-task one
    assert lines[rows[0] - 1].startswith("| dtmem | none |")  # last, under the models
    assert f"| {cell.point:.2f} n=1×2 |" in lines[rows[0]]
    reach = report.cell(*EXPERTS, "pretrained", "reach")
    assert f"| {reach.point:.2f} n=1 `{reach.run_ids[0][:8]}` |" in lines[rows[1]]
    csv_rows = [r for r in report.csv_path.read_text().splitlines() if r.startswith(EXPERTS_ARM)]
    assert len(csv_rows) == 3 and all(",pretrained," in r for r in csv_rows)


def test_no_experts_row_without_a_collect_node(store, tmp_path):
    mk = _Maker(store.uri, "given-datasets")
    parent = mk.run({TAG_STAGE: STAGE, TAG_EXPERIMENT: "given"})
    for seed in SEEDS[:2]:
        mk.run(
            {
                TAG_EXPERIMENT_RUN: parent,
                TAG_STAGE: "evaluate",
                TAG_ARM: "dt",
                TAG_SEED: seed,
                TAG_FT_MODE: "none",
                TAG_EVAL_KIND: "pretrained",
            },
            metrics={_success(t): 0.25 for t in TRAIN_TASKS},
        )
    mk.run({TAG_EXPERIMENT_RUN: parent, TAG_STAGE: "dataset", TAG_NODE: "dataset/ml10"})
    rep = build_report(store.uri, parent, tmp_path / "out", num_resamples=50)
    assert rep.cell("dt", "none", "pretrained").point == pytest.approx(0.25)
    with pytest.raises(KeyError):
        rep.cell(*EXPERTS, "pretrained")
    assert not [c for c in rep.cells if c.arm == EXPERTS_ARM]
    assert f"| {EXPERTS_ARM} |" not in rep.markdown
    assert EXPERTS_ARM not in rep.csv_path.read_text()
    # A collect node that made the data of one pretraining task only: a dash on the other.
    mk.run(
        {TAG_EXPERIMENT_RUN: parent, TAG_STAGE: "collect", TAG_NODE: "collect/reach"},
        metrics={M.collect_metric("reach", "success_rate"): 0.875},
    )
    rep = build_report(store.uri, parent, tmp_path / "out", num_resamples=50)
    assert rep.cell(*EXPERTS, "pretrained").point == pytest.approx(0.875)
    assert rep.cell(*EXPERTS, "pretrained").n_tasks == 1
    assert rep.cell(*EXPERTS, "pretrained", "push").point is None
    notes = "\n".join(rep.notes)
    assert f"{EXPERTS_ARM}/none pretraining tasks on push: no collect run (a dash" in notes
    assert "on 1 of the 2 pretraining tasks (? episodes kept per task)" in notes


def test_files_written_and_logged_on_the_parent(report, store):
    from mlflow.tracking import MlflowClient

    out = report.markdown_path.parent
    assert sorted(p.name for p in out.iterdir()) == sorted(
        ["report.md", "report.csv", "bars.png", "curves.png"]
        + [f"heatmap_{m}.png" for m in ("finetuned", "zero_shot", "pretrained", "forgetting")]
    )
    assert all(p.stat().st_size > 1000 for p in report.plot_paths)
    assert not [p for p in out.parent.iterdir() if p.name.startswith(".")]  # no temp left
    md = report.markdown_path.read_text()
    assert md == report.markdown
    lora_row = next(line for line in md.splitlines() if line.startswith("| dtmem | lora |"))
    c = report.cell("dtmem", "lora", "finetuned")
    assert f"{c.point:.2f} [{c.low:.2f}, {c.high:.2f}] n=3×5" in lora_row
    assert "| – |" in md  # the missing task
    rows = report.csv_path.read_text().splitlines()
    header = rows[0].split(",")
    assert len(rows) == 1 + len(report.cells)
    first = dict(zip(header, rows[1].split(","), strict=True))
    cell = report.cells[0]
    assert first["run_ids"] == ";".join(cell.run_ids) and first["n_seeds"] == str(cell.n_seeds)
    logged = {a.path for a in MlflowClient(store.uri).list_artifacts(store.parent, "report")}
    assert {"report/report.md", "report/report.csv", "report/bars.png"} <= logged


def test_deterministic_and_replaces_the_old_report(report, store, tmp_path):
    out = tmp_path / "again"
    out.mkdir()
    (out / "stale.txt").write_text("old")
    again = build_report(store.uri, store.parent, out)
    assert again.cells == report.cells and again.markdown == report.markdown
    assert not (out / "stale.txt").exists()


def test_a_failed_write_leaves_the_old_report(store, tmp_path, monkeypatch):
    from dtmem.experiment import report as module

    out = tmp_path / "r"
    out.mkdir()
    (out / "report.md").write_text("old")

    def boom(*args, **kwargs):
        raise RuntimeError("disk full")

    monkeypatch.setattr(module, "_plots", boom)
    with pytest.raises(RuntimeError, match="disk full"):
        build_report(store.uri, store.parent, out)
    assert [p.name for p in tmp_path.iterdir()] == ["r"]
    assert (out / "report.md").read_text() == "old"


def test_atari_uses_the_iqm_of_normalised_scores(store, tmp_path):
    mk = _Maker(store.uri, "atari")
    parent = mk.run({TAG_STAGE: STAGE, TAG_EXPERIMENT: "atari"})
    single = mk.run({TAG_STAGE: STAGE, TAG_EXPERIMENT: "atari-one-seed"})
    rng = np.random.default_rng(1)
    scores: dict[str, list[float]] = {}
    for seed, made_by in (
        ("0", parent),
        ("1", parent),
        ("2", parent),
        ("3", parent),
        ("0", single),
    ):
        for game in ("Alien", "MsPacman", "Pong"):
            v = float(rng.normal(0.5, 0.5))
            if made_by == parent:
                scores.setdefault(game, []).append(v)
            mk.run(
                {
                    TAG_EXPERIMENT_RUN: made_by,
                    TAG_STAGE: "evaluate",
                    TAG_ARM: "dtmem",
                    TAG_SEED: seed,
                    TAG_TASK: game,
                    TAG_FT_MODE: "lora",
                    TAG_EVAL_KIND: "finetuned",
                },
                metrics={M.eval_metric(game, "score_normalized"): v},
            )
    rep = build_report(store.uri, parent, tmp_path / "out", num_resamples=300, seed=5)
    cell = rep.cell("dtmem", "lora", "finetuned")
    assert cell.statistic == "iqm"
    assert cell.point == pytest.approx(iqm(np.concatenate(list(scores.values()))))
    expected = stratified_bootstrap_ci(scores, "iqm", num_resamples=300, seed=5)
    assert (cell.low, cell.high) == pytest.approx((expected.low, expected.high))
    assert "IQM of `score_normalized`" in rep.markdown
    assert "## Nodes skipped as cached" not in rep.markdown  # no nodes.json, nothing reused
    assert "rests on one seed" not in rep.markdown
    one = build_report(store.uri, parent, tmp_path / "one", num_resamples=100, statistic="mean")
    assert one.cell("dtmem", "lora", "finetuned").statistic == "mean"  # as asked, not inferred
    alone = build_report(store.uri, single, tmp_path / "single", num_resamples=100)
    cell = alone.cell("dtmem", "lora", "finetuned")
    assert cell.n_seeds == 1 and cell.low == cell.point == cell.high
    assert "rests on one seed" in alone.markdown


def test_bad_experiment_run_ids(store, tmp_path):
    with pytest.raises(ReportError, match="letters, digits"):
        build_report(store.uri, "x' or '1'='1", tmp_path / "o")
    with pytest.raises(ReportError, match="no run tagged"):
        build_report(store.uri, "0123abcd", tmp_path / "o")
    assert not (tmp_path / "o").exists()
