"""Experiments: the plan of the shipped files, bad input, node keys, and one tiny study run
end to end through a failure, its resume, a fully cached rerun and an altered checkpoint."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from dtmem.experiment import (
    TAG_ARM,
    TAG_EVAL_KIND,
    TAG_EXPERIMENT,
    TAG_EXPERIMENT_RUN,
    TAG_FT_MODE,
    TAG_NODE,
    TAG_NODE_KEY,
    TAG_REPLACES,
    TAG_SEED,
    TAG_STAGE,
    TAG_TASK,
    TAG_UPSTREAM,
)
from dtmem.experiment.dag import ExperimentError, build_plan
from dtmem.experiment.keys import code_version

REPO = Path(__file__).resolve().parents[1]
EXPERIMENTS = REPO / "pipelines/experiments"
QUICKSTART = EXPERIMENTS / "quickstart.yaml"
SMOKE = "pretrain/dtmem/s0"
FINETUNE = "finetune/dtmem/s0/bin-picking-v3/lora"


@pytest.fixture
def store(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.chdir(tmp_path)
    return uri


# --------------------------------------------------------------------------- plans


def test_quickstart_plan_lists_nodes_edges_and_keys_without_running(store, capsys) -> None:
    from pipelines.experiment import plan_main

    plan = build_plan(QUICKSTART)
    assert list(plan.nodes) == [
        "collect/smoke",
        "pretrain/dtmem/s0",
        "pretrain/dt/s0",
        FINETUNE,
        "evaluate/dtmem/s0/pretrained",
        "evaluate/dtmem/s0/bin-picking-v3/zero_shot",
        "evaluate/dt/s0/pretrained",
        "evaluate/dt/s0/bin-picking-v3/zero_shot",
        f"evaluate/{FINETUNE[len('finetune/') :]}/finetuned",
        f"evaluate/{FINETUNE[len('finetune/') :]}/forgetting",
        "sweep/slots",
    ]
    edges = set(plan.edges())
    assert ("collect/smoke", SMOKE) in edges and (SMOKE, FINETUNE) in edges
    assert ("collect/smoke", "sweep/slots") in edges
    assert (FINETUNE, "evaluate/dtmem/s0/bin-picking-v3/lora/forgetting") in edges
    keys = [n.key for n in plan.nodes.values()]
    assert len(set(keys)) == len(keys) and all(len(k) == 32 for k in keys)
    forgetting = plan.nodes["evaluate/dtmem/s0/bin-picking-v3/lora/forgetting"]
    assert dict(forgetting.labels) == {
        "arm": "dtmem",
        "seed": "0",
        "task": "bin-picking-v3",
        "ft_mode": "lora",
        "eval_kind": "forgetting",
    }
    assert forgetting.config.metaworld.tasks == ("reach-v3", "push-v3", "pick-place-v3")

    assert plan_main(QUICKSTART, []) == 0
    out = capsys.readouterr().out
    assert "11 nodes, 11 edges" in out and plan.nodes[FINETUNE].key[:12] in out
    from mlflow.tracking import MlflowClient

    exp = MlflowClient(store).get_experiment_by_name("dtmem-quickstart")
    assert exp is None or not MlflowClient(store).search_runs([exp.experiment_id])


@pytest.mark.parametrize(
    ("name", "nodes", "pretrain_asks"),
    [
        ("atari-paper", 224, {"CPU": 64.0, "GPU": 8.0}),
        ("metaworld-ml45-paper", 134, {"CPU": 32.0, "GPU": 8.0}),
    ],
)
def test_paper_plans_print_what_each_node_asks_for(capsys, name, nodes, pretrain_asks) -> None:
    from rich.console import Console

    from pipelines.experiment import estimate_line, print_plan

    plan = build_plan(EXPERIMENTS / f"{name}.yaml")
    assert len(plan.nodes) == nodes
    assert dict(plan.nodes["pretrain/dtmem/s2"].resources) == pretrain_asks
    kinds = {n.labels.get("eval_kind") for n in plan.nodes.values() if n.stage == "evaluate"}
    assert kinds == {"pretrained", "zero_shot", "finetuned", "forgetting"}
    print_plan(plan, {}, Console(width=200))
    out = capsys.readouterr().out
    asks = ", ".join(f"{v:g} {k}" for k, v in sorted(pretrain_asks.items()))
    assert asks in out and f"{nodes} nodes" in out
    # the estimate line under the plan: a collect node with the env's own step limit (null)
    # is costed at that limit, not a crash
    line = estimate_line(plan, {})
    assert line.startswith("estimated wall time here:") and f"for {nodes} nodes" in line


# --------------------------------------------------------------------------- bad input


@pytest.mark.parametrize(
    ("overrides", "expected"),
    [
        (["arms.dt.after=[sweep/slots]", f"sweeps.slots.after=[{'pretrain/dt/s0'}]"], "cycle: "),
        (["finetune.arms=[nope]"], "finetune.arms: 'nope' is not an arm"),
        (["arms.dt.after=[sweep/nope]"], "arms.dt.after: 'sweep/nope' is not a node"),
        (
            ['arms.dt.pretrain.overrides=["optim.bogus=1"]'],
            "arms.dt.pretrain.config: {smoke}: optim.bogus: unknown field",
        ),
        (["finetune.config=nowhere.yaml"], "finetune: "),
        (["bogus=1"], "bogus: unknown field"),
        (["held_out_tasks=[reach-v3]"], "reach-v3 is also a train task"),
        (["baselines={dt: {kind: nearest_neighbour}}"], "baselines.dt: also the name of an arm"),
        (
            ['arms.dtmem.finetune_overrides=["lora.bogus=1"]'],
            "arms.dtmem.finetune_overrides / finetune: ",
        ),
    ],
)
def test_bad_input_is_one_line_naming_file_and_field(store, overrides, expected) -> None:
    smoke = EXPERIMENTS / "../configs/smoke/pretrain.yaml"
    with pytest.raises(ExperimentError) as err:
        build_plan(QUICKSTART, overrides)
    message = str(err.value)
    assert "\n" not in message and message.startswith(str(QUICKSTART))
    assert expected.format(smoke=smoke) in message
    assert not Path("mlflow.db").exists()  # nothing ran, nothing was logged


def test_unreadable_stage_yaml_and_the_cli_exit_code(store, tmp_path) -> None:
    from typer.testing import CliRunner

    from dtmem.cli import app

    broken = tmp_path / "broken.yaml"
    broken.write_text("optim: [\n")
    with pytest.raises(ExperimentError, match=r"finetune: .*broken.yaml: invalid YAML"):
        build_plan(QUICKSTART, [f"finetune.config={broken}"])
    result = CliRunner().invoke(
        app, ["experiment", "run", str(QUICKSTART), "--set", "arms.dt.after=[nope]"]
    )
    assert result.exit_code == 2
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and "arms.dt.after: 'nope' is not a node" in lines[0]
    assert not Path("mlflow.db").exists()


# --------------------------------------------------------------------------- keys


def test_one_finetune_field_changes_that_finetune_and_its_evaluations_only() -> None:
    base = build_plan(QUICKSTART)
    again = build_plan(QUICKSTART)
    assert {n: v.key for n, v in base.nodes.items()} == {n: v.key for n, v in again.nodes.items()}
    changed = build_plan(QUICKSTART, ["finetune.overrides=[optim.max_steps=151]"])
    differ = {n for n in base.nodes if base.nodes[n].key != changed.nodes[n].key}
    assert differ == {
        FINETUNE,
        "evaluate/dtmem/s0/bin-picking-v3/lora/finetuned",
        "evaluate/dtmem/s0/bin-picking-v3/lora/forgetting",
    }
    # where runs are logged is not what they compute
    moved = build_plan(QUICKSTART, ["tracking.experiment=elsewhere"])
    assert all(moved.nodes[n].key == base.nodes[n].key for n in base.nodes)
    # an upstream change reaches everything below it
    pre = build_plan(QUICKSTART, ['arms.dtmem.pretrain.overrides=["optim.max_steps=601"]'])
    differ = {n for n in base.nodes if base.nodes[n].key != pre.nodes[n].key}
    assert differ == {SMOKE} | base.downstream(SMOKE)


def test_an_edited_source_file_changes_the_code_version(tmp_path) -> None:
    pkg = tmp_path / "dtmem"
    shutil.copytree(REPO / "dtmem" / "experiment", pkg / "experiment")
    before = code_version([pkg])
    assert before == code_version([pkg])
    helper = pkg / "experiment" / "keys.py"
    helper.write_text(helper.read_text() + "\n# an edit\n")
    assert code_version([pkg]) != before
    edited = code_version([pkg])
    for read_only in ("report_tables.py", "status.py"):  # they only read finished runs
        path = pkg / "experiment" / read_only
        path.write_text(path.read_text() + "\n# an edit\n")
    assert code_version([pkg]) == edited
    (pkg / "experiment" / "notes.txt").write_text("not a source")
    assert len(code_version()) == 16


# --------------------------------------------------------------------------- a tiny study

TASKS = ("reach-v3", "push-v3", "pick-place-v3", "bin-picking-v3")
_TRAIN = ["optim.warmup_steps=2", "log_every=5", "scaling.num_workers=1", "progress=false"]


def _tiny(ids: list[str], pretrain_steps: int = 10) -> list[str]:
    """quickstart.yaml on synthetic data: one arm, tiny budgets, two evaluations."""
    arm = {
        "pretrain": {
            "config": "../configs/smoke/pretrain.yaml",
            "overrides": [f"optim.max_steps={pretrain_steps}", "checkpoint.every_steps=5", *_TRAIN],
        }
    }
    return [
        "report.enabled=false",
        "sweeps={}",
        "datasets.smoke=" + json.dumps({"minari": {"ids": ids}}),
        "arms=" + json.dumps({"dtmem": arm}),
        # no checkpoint before step 15: a failure there leaves nothing to resume
        "finetune.overrides="
        + json.dumps(["optim.max_steps=16", "checkpoint.every_steps=50", *_TRAIN]),
        "evaluate.pretrained=false",
        "evaluate.forgetting=false",
        "evaluate.overrides="
        + json.dumps(
            ["num_actors=1", "envs_per_actor=1", "metaworld.episodes=1", "metaworld.max_steps=5"]
        ),
    ]


def _node_runs(client, exp_id: str, node: str) -> list:
    return client.search_runs([exp_id], filter_string=f"tags.`{TAG_NODE}` = '{node}'")


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_tiny_study_fails_resumes_caches_and_reruns_an_altered_checkpoint(
    ray_session, store, tmp_path, monkeypatch, capsys
) -> None:
    from mlflow.tracking import MlflowClient

    from dtmem.data.synthetic import write_metaworld_like
    from dtmem.experiment.cache import checkpoint_digest
    from dtmem.experiment.runner import run_experiment
    from dtmem.experiment.status import experiment_status
    from pipelines.experiment import run_main

    root = tmp_path / "datasets"
    monkeypatch.setenv("MINARI_DATASETS_PATH", str(root))
    ids = [f"dtmem/smoke/{t}-expert-v0" for t in TASKS]
    for task, dataset_id in zip(TASKS, ids, strict=True):
        write_metaworld_like(root, dataset_id, task, episodes=4, steps=60)
    # other engineers' edits to the shared tree must not change the keys mid-test
    pinned = code_version()
    monkeypatch.setattr("dtmem.experiment.dag.code_version", lambda: pinned)
    client = MlflowClient(store)
    decoy = client.create_run(client.create_experiment("decoy")).info.run_id
    monkeypatch.setenv("MLFLOW_RUN_ID", decoy)  # an inherited run id must not hijack anything
    monkeypatch.setenv("DTMEM_TEST_FAIL_AT_STEP", "15")  # only the fine-tune reaches it
    overrides = _tiny(ids)
    zero_shot = "evaluate/dtmem/s0/bin-picking-v3/zero_shot"
    finetuned = "evaluate/dtmem/s0/bin-picking-v3/lora/finetuned"

    # 1. The fine-tune fails: its evaluation is skipped, the other branch finishes, exit 1.
    assert run_main(QUICKSTART, overrides) == 1
    out = capsys.readouterr().out
    assert f"failed {FINETUNE}: SimulatedFailure" in " ".join(out.split())
    exp = client.get_experiment_by_name("dtmem-quickstart")
    parents = client.search_runs([exp.experiment_id], f"tags.`{TAG_STAGE}` = 'experiment'")
    assert len(parents) == 1 and parents[0].info.status == "FAILED"
    first_parent = parents[0].info.run_id
    assert first_parent != decoy and "mlflow.parentRunId" not in parents[0].data.tags
    assert not client.search_runs([exp.experiment_id], f"tags.`mlflow.parentRunId` = '{decoy}'")
    (failed,) = _node_runs(client, exp.experiment_id, FINETUNE)
    assert failed.info.status == "FAILED"
    assert not _node_runs(client, exp.experiment_id, finetuned)
    (zs,) = _node_runs(client, exp.experiment_id, zero_shot)
    assert zs.info.status == "FINISHED"
    plan = build_plan(QUICKSTART, overrides)
    latest, rows = experiment_status(plan)
    assert latest == first_parent
    assert {r.name: r.state for r in rows} == {
        "dataset/smoke": "done",
        SMOKE: "done",
        FINETUNE: "failed",
        zero_shot: "done",
        finetuned: "pending",
    }

    # 2. Rerun: the finished nodes are cached, the fine-tune runs again naming what it
    #    replaces, its evaluation runs; lineage tags walk back to the data.
    result = run_experiment(plan, say=lambda _: None)
    assert result.ok, [(f.name, f.error) for f in result.failures]
    states = {n: o.state for n, o in result.outcomes.items()}
    assert states == {
        "dataset/smoke": "cached",
        SMOKE: "cached",
        FINETUNE: "ran",
        zero_shot: "cached",
        finetuned: "ran",
    }
    ft = client.get_run(result.outcomes[FINETUNE].run_id)
    assert ft.data.tags[TAG_REPLACES] == failed.info.run_id
    ev = client.get_run(result.outcomes[finetuned].run_id)
    tags = ev.data.tags
    assert tags[TAG_UPSTREAM] == ft.info.run_id
    assert tags[TAG_EXPERIMENT_RUN] == result.experiment_run_id == tags["mlflow.parentRunId"]
    assert (tags[TAG_EXPERIMENT], tags[TAG_ARM], tags[TAG_SEED]) == ("quickstart", "dtmem", "0")
    assert (tags[TAG_TASK], tags[TAG_FT_MODE], tags[TAG_EVAL_KIND]) == (
        "bin-picking-v3",
        "lora",
        "finetuned",
    )
    assert tags[TAG_NODE_KEY] == plan.nodes[finetuned].key
    assert "eval/bin-picking-v3/success_rate" in ev.data.metrics
    pre = client.get_run(ft.data.tags[TAG_UPSTREAM].split(",")[0])
    assert pre.data.tags[TAG_NODE] == SMOKE
    data = client.get_run(pre.data.tags[TAG_UPSTREAM])
    assert data.data.tags[TAG_NODE] == "dataset/smoke"

    # 3. Everything cached: nothing recomputed, no new node run.
    before = len(client.search_runs([exp.experiment_id]))
    again = run_experiment(plan, say=lambda _: None)
    assert {o.state for o in again.outcomes.values()} == {"cached"}
    assert len(client.search_runs([exp.experiment_id])) == before + 1  # the parent only
    assert {r.state for r in experiment_status(plan)[1]} == {"cached"}

    # 4. An altered checkpoint is not trusted: the pretraining runs again (its
    #    evaluation too? no: keys are unchanged and their own outputs verify).
    weights = next(Path(again.outcomes[SMOKE].checkpoint() or "").glob("*.safetensors"))
    weights.write_bytes(weights.read_bytes()[:-8] + b"\0" * 8)
    third = run_experiment(plan, say=lambda _: None)
    assert third.outcomes[SMOKE].state == "ran"
    assert all(o.state == "cached" for n, o in third.outcomes.items() if n != SMOKE)
    new_ckpt = Path(third.outcomes[SMOKE].checkpoint() or "")
    assert checkpoint_digest(new_ckpt) == third.outcomes[SMOKE].outputs[0].digest
    finished = [
        r
        for r in client.search_runs(
            [exp.experiment_id], f"tags.`{TAG_NODE_KEY}` = '{plan.nodes[SMOKE].key}'"
        )
        if r.info.status == "FINISHED"
    ]
    assert [r.info.run_id for r in finished] == [third.outcomes[SMOKE].run_id]


def _spin(ready: str, marker: str, lose: int = 0) -> None:
    """A Ray task's busy loop: says it is running (``ready``), loses its first ``lose``
    KeyboardInterrupts (as one raised inside a finalizer is lost), then marks the next one
    (``marker``) and unwinds from it."""
    lost = 0
    while True:
        try:
            Path(ready).touch()  # inside the try: an interrupt after it is one of the loop's
            while True:
                sum(range(1000))
        except KeyboardInterrupt:
            lost += 1
            if lost > lose:
                Path(marker).touch()
                raise


def _started(ready: Path) -> None:
    import time

    deadline = time.monotonic() + 60
    while not ready.exists():
        assert time.monotonic() < deadline, "the task never started"
        time.sleep(0.1)


@pytest.mark.timeout(120)
def test_a_lost_cancel_is_sent_again_before_the_task_is_killed(ray_session, tmp_path) -> None:
    """The runner's stop: a stage whose first interrupt was lost gets a second halfway
    through the grace and unwinds from it (its marker), instead of being killed at the end."""
    import time
    from concurrent.futures import ThreadPoolExecutor

    from ray.exceptions import TaskCancelledError

    from dtmem.experiment.runner import cancel_within

    ready, second = tmp_path / "ready", tmp_path / "second"
    task = ray_session.remote(num_cpus=0, max_retries=0)(_spin)
    ref = task.remote(str(ready), str(second), lose=1)
    _started(ready)
    grace = 6.0
    with ThreadPoolExecutor(1) as pool:
        result = pool.submit(ray_session.get, ref)
        t0 = time.monotonic()
        cancel_within([ref], [result], grace)
        took = time.monotonic() - t0
        with pytest.raises(TaskCancelledError):
            result.result(timeout=0)
    assert second.exists()  # interrupted twice and unwound, not killed
    assert grace / 2 <= took < grace


def _one() -> int:
    return 1


def test_the_stop_cancels_only_tasks_whose_result_is_not_in(
    ray_session, tmp_path, monkeypatch
) -> None:
    """Each round of the stop cancels the tasks still running, never one that has ended (a
    force-cancel racing a task's reply aborts the driver in Ray 2.60)."""
    from concurrent.futures import ThreadPoolExecutor

    from dtmem.experiment.runner import cancel_within

    ready, second = tmp_path / "ready", tmp_path / "second"
    running = ray_session.remote(num_cpus=0, max_retries=0)(_spin).remote(
        str(ready), str(second), lose=2
    )
    ended = ray_session.remote(num_cpus=0)(_one).remote()
    assert ray_session.get(ended) == 1
    _started(ready)
    cancels: list[tuple[object, bool]] = []
    cancel = ray_session.cancel

    def recorded(ref: object, force: bool = False) -> None:
        cancels.append((ref, force))
        cancel(ref, force=force)

    monkeypatch.setattr(ray_session, "cancel", recorded)
    with ThreadPoolExecutor(2) as pool:
        futures = [pool.submit(ray_session.get, r) for r in (running, ended)]
        cancel_within([running, ended], futures, grace=2.0)
    assert cancels == [(running, False), (running, False), (running, True)]


def _spin_cancellable_ignoring_sigint(ready: str, interrupted: str, after: str) -> None:
    """``_spin`` as a stage in a worker that ignores SIGINT (as the workers of a driver
    started in the background or under nohup do), inside ``cancellable``; records the
    handler it finds afterwards."""
    import signal

    from dtmem.interrupts import cancellable

    before = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        with cancellable():
            _spin(ready, interrupted)
    finally:
        ignored = signal.getsignal(signal.SIGINT) is signal.SIG_IGN
        Path(after).write_text("ignored" if ignored else "other")
        signal.signal(signal.SIGINT, before)  # the shared worker as it was


@pytest.mark.timeout(120)
def test_a_stage_answers_ray_cancel_where_its_worker_ignores_sigint(ray_session, tmp_path) -> None:
    """Ray's cancel calls SIGINT's handler in the task, which does nothing where SIGINT is
    ignored; a study's stage runs inside ``cancellable`` and is interrupted all the same,
    and the worker's own handler is put back after."""
    from ray.exceptions import TaskCancelledError

    ready, hit, after = tmp_path / "ready", tmp_path / "interrupted", tmp_path / "after"
    task = ray_session.remote(num_cpus=0, max_retries=0)(_spin_cancellable_ignoring_sigint)
    ref = task.remote(str(ready), str(hit), str(after))
    try:
        _started(ready)
        ray_session.cancel(ref)
        with pytest.raises(TaskCancelledError):
            ray_session.get(ref, timeout=20)
    finally:  # never left spinning in the shared Ray; force-cancelling a task whose result
        # is in can abort this process (Ray 2.60, see runner.cancel_within)
        if not ray_session.wait([ref], timeout=0)[0]:
            ray_session.cancel(ref, force=True)
    assert hit.exists()
    assert after.read_text() == "ignored"


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_a_terminated_study_ends_its_runs_killed_not_running(
    ray_session, store, tmp_path, monkeypatch
) -> None:
    """SIGTERM (``ray job stop``, ``kill``) mid-training: the node's stage is cancelled and
    its run ends KILLED, then the parent run; nothing is left RUNNING, and it is prompt."""
    import signal
    import time

    from mlflow.tracking import MlflowClient

    from dtmem.data.synthetic import write_metaworld_like
    from dtmem.experiment.runner import STOP_GRACE_S, run_experiment
    from dtmem.experiment.status import experiment_status
    from dtmem.interrupts import Terminated, sigterm_interrupts
    from tests.helpers import signal_when

    root = tmp_path / "datasets"
    monkeypatch.setenv("MINARI_DATASETS_PATH", str(root))
    ids = [f"dtmem/smoke/{t}-expert-v0" for t in TASKS]
    for task, dataset_id in zip(TASKS, ids, strict=True):
        write_metaworld_like(root, dataset_id, task, episodes=4, steps=60)
    plan = build_plan(QUICKSTART, _tiny(ids, pretrain_steps=1_000_000))
    client = MlflowClient(store)

    def training() -> bool:  # the pretraining has logged a loss
        exp = client.get_experiment_by_name("dtmem-quickstart")
        runs = _node_runs(client, exp.experiment_id, SMOKE) if exp else []
        return bool(runs) and "train/loss" in runs[0].data.metrics

    said: list[str] = []
    with sigterm_interrupts(), pytest.raises(Terminated):
        sent = signal_when(training, signal.SIGTERM, poll=0.5)  # an MLflow query each
        run_experiment(plan, say=said.append)
    stopped = time.monotonic()
    assert sent and stopped - sent[0] < STOP_GRACE_S  # the stage unwound, it was not killed
    assert f"interrupted: stopping 1 running node(s): {SMOKE}" in said
    exp = client.get_experiment_by_name("dtmem-quickstart")
    (pre,) = _node_runs(client, exp.experiment_id, SMOKE)
    assert pre.info.status == "KILLED"
    (parent,) = client.search_runs([exp.experiment_id], f"tags.`{TAG_STAGE}` = 'experiment'")
    assert parent.info.status == "KILLED"
    statuses = {r.info.status for r in client.search_runs([exp.experiment_id])}
    assert "RUNNING" not in statuses
    _, rows = experiment_status(plan)
    assert {r.name: r.state for r in rows}[SMOKE] == "stopped"  # not mistaken for a bug


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_ray_job_stop_through_the_cli_ends_the_study_killed(store, tmp_path) -> None:
    """The real command in its own process, which starts its own Ray (``ray.init`` installs
    a SIGTERM handler that kills everything at once; ``ray_session`` puts dtmem's back):
    SIGTERM mid-pretraining ends it with exit code 143, the node's run and the parent KILLED."""
    import os
    import signal
    import subprocess
    import sys
    import time

    from mlflow.tracking import MlflowClient

    from dtmem.data.synthetic import write_metaworld_like

    root = tmp_path / "datasets"
    ids = [f"dtmem/smoke/{t}-expert-v0" for t in TASKS]
    for task, dataset_id in zip(TASKS, ids, strict=True):
        write_metaworld_like(root, dataset_id, task, episodes=4, steps=60)
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    env.update(MINARI_DATASETS_PATH=str(root), MLFLOW_TRACKING_URI=store)
    command = [sys.executable, "-m", "dtmem.cli", "experiment", "run", str(QUICKSTART)]
    for override in _tiny(ids, pretrain_steps=1_000_000):
        command += ["--set", override]
    proc = subprocess.Popen(command, env=env, cwd=tmp_path, stdout=subprocess.PIPE, text=True)
    client = MlflowClient(store)
    try:
        deadline = time.monotonic() + 200
        while proc.poll() is None and time.monotonic() < deadline:
            exp = client.get_experiment_by_name("dtmem-quickstart")
            runs = _node_runs(client, exp.experiment_id, SMOKE) if exp else []
            if runs and "train/loss" in runs[0].data.metrics:
                break
            time.sleep(0.5)
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 143, out
    assert f"interrupted: stopping 1 running node(s): {SMOKE}" in out
    exp = client.get_experiment_by_name("dtmem-quickstart")
    (pre,) = _node_runs(client, exp.experiment_id, SMOKE)
    (parent,) = client.search_runs([exp.experiment_id], f"tags.`{TAG_STAGE}` = 'experiment'")
    assert (pre.info.status, parent.info.status) == ("KILLED", "KILLED")
