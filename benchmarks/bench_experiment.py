"""What the experiment runner costs on top of the stages it runs.

1. Overhead per node: the quickstart experiment's DAG (11 nodes: data, two pretrainings,
   a LoRA fine-tune, six evaluations, a sweep) on synthetic Meta-World-shaped data with tiny
   budgets, run once; for each node that ran, its wall time in the runner against the
   stage's own time inside its Ray task (the rest: binding, the Ray task and its worker
   process, recording outputs in MLflow), plus planning and the cache checks.
2. A fully cached rerun: ``dtmem experiment run`` on the same file, in a fresh process, as a
   user types it (interpreter, imports, planning, MLflow lookups, output hashing).
3. Two independent evaluation nodes (one actor each) side by side against one after the
   other (``resources.max_parallel`` 2 vs 1), measured in turn, ``--pairs`` times; each
   pair changes the evaluations' episode seed so they rerun while the rest stays cached.

Prints ``BENCH experiment_cached_rerun_s``, ``BENCH experiment_overhead_share`` and
``BENCH experiment_parallel_eval_speedup`` last.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
QUICKSTART = REPO / "pipelines/experiments/quickstart.yaml"
TASKS = ("reach-v3", "push-v3", "pick-place-v3", "bin-picking-v3")
TRAIN = ["optim.warmup_steps=2", "log_every=5", "scaling.num_workers=1", "progress=false"]
SWEEP = [
    "scaling.num_workers=1",
    "optim.max_steps=10",
    "optim.warmup_steps=2",
    "checkpoint.every_steps=5",
    "log_every=5",
    "data.episode_fraction=0.75",
    "progress=false",
]


def overrides(ids: list[str]) -> list[str]:
    """The quickstart's DAG, on synthetic data, with tiny budgets."""
    return [
        "report.enabled=false",
        "datasets.smoke=" + json.dumps({"minari": {"ids": ids}}),
        "arms.dtmem.pretrain.overrides="
        + json.dumps(["optim.max_steps=10", "checkpoint.every_steps=5", *TRAIN]),
        "arms.dt.pretrain.overrides="
        + json.dumps(
            ["optim.max_steps=10", "checkpoint.every_steps=5", "model.memory=null", *TRAIN]
        ),
        "finetune.overrides="
        + json.dumps(["optim.max_steps=6", "checkpoint.every_steps=5", *TRAIN]),
        eval_overrides(seed=0),
        "sweeps.slots.overrides="
        + json.dumps(
            [
                "space={model.memory.slots: {grid: [8]}}",
                "evaluation=null",
                "scheduler.grace_period=5",
                "overrides=" + json.dumps(SWEEP),
            ]
        ),
    ]


def eval_overrides(seed: int) -> str:
    """One actor per evaluation node; ``seed`` (the episodes') changes the nodes' keys."""
    sets = ["num_actors=1", "envs_per_actor=1", "metaworld.episodes=2", "metaworld.max_steps=20"]
    return "evaluate.overrides=" + json.dumps([*sets, f"seed={seed}"])


def eval_span(result, names: list[str]) -> float:
    """Seconds from the first of ``names`` starting to the last one ending."""
    outs = [result.outcomes[n] for n in names]
    return max(o.start_s + o.wall_s for o in outs) - min(o.start_s for o in outs)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pairs", type=int, default=2, help="side-by-side/serial pairs")
    args = parser.parse_args()

    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    os.environ["MLFLOW_ENABLE_SYSTEM_METRICS_LOGGING"] = "false"
    work = Path(tempfile.mkdtemp(prefix="bench-experiment-"))
    os.chdir(work)
    os.environ["MLFLOW_TRACKING_URI"] = f"sqlite:///{work / 'mlflow.db'}"
    os.environ["MINARI_DATASETS_PATH"] = str(work / "datasets")

    from dtmem.data.synthetic import write_metaworld_like
    from dtmem.experiment.dag import build_plan
    from dtmem.experiment.runner import run_experiment
    from dtmem.ray_session import ray_session

    ids = [f"dtmem/smoke/{t}-expert-v0" for t in TASKS]
    for task, dataset_id in zip(TASKS, ids, strict=True):
        write_metaworld_like(work / "datasets", dataset_id, task, episodes=4, steps=60)
    sets = overrides(ids)
    quiet = lambda _: None  # noqa: E731

    with ray_session(num_cpus=2):
        # 1. One run of the whole DAG: overhead per node.
        t0 = time.perf_counter()
        plan = build_plan(QUICKSTART, sets)
        plan_s = time.perf_counter() - t0
        first = run_experiment(plan, say=print)
        assert first.ok, [(f.name, f.error) for f in first.failures]
        ran = [o for o in first.outcomes.values() if o.state == "ran"]
        overhead = sum(o.overhead_s for o in ran) + plan_s
        work_s = sum(o.wall_s - o.overhead_s for o in ran)
        print(f"{len(ran)} nodes ran in {first.wall_s:.1f}s; planning {plan_s:.2f}s")
        for o in ran:
            print(f"  {o.name:52} wall {o.wall_s:6.1f}s  overhead {o.overhead_s:5.2f}s")

        # 2. A fully cached rerun, as a user types it.
        cmd = [str(REPO / ".venv/bin/dtmem"), "experiment", "run", str(QUICKSTART)]
        for s in sets:
            cmd += ["--set", s]
        t0 = time.perf_counter()
        out = subprocess.run(cmd, capture_output=True, text=True, check=False)
        cached_s = time.perf_counter() - t0
        assert out.returncode == 0, out.stderr[-2000:]
        assert "11 cached" in out.stdout, out.stdout[-2000:]
        print(out.stdout.strip().splitlines()[-1])

        # 3. Two evaluation nodes side by side vs one after the other, in turn.
        evals = ["evaluate/dtmem/s0/pretrained", "evaluate/dt/s0/pretrained"]
        only = [
            "finetune.arms=[dtmem]",
            "evaluate.zero_shot=false",
            "evaluate.finetuned=false",
            "evaluate.forgetting=false",
        ]
        ratios = []
        for i in range(args.pairs):
            spans = {}
            for width in (1, 2):
                seed = 100 + 2 * i + width
                width_sets = [*sets, *only, f"resources.max_parallel={width}"]
                p = build_plan(QUICKSTART, [*width_sets, eval_overrides(seed)])
                r = run_experiment(p, say=quiet)
                assert r.ok and all(r.outcomes[e].state == "ran" for e in evals)
                spans[width] = eval_span(r, evals)
            ratios.append(spans[1] / spans[2])
            print(f"pair {i}: one after the other {spans[1]:.1f}s, side by side {spans[2]:.1f}s")

    print(f"BENCH experiment_cached_rerun_s {cached_s:.2f}")
    print(f"BENCH experiment_overhead_share {overhead / (overhead + work_s):.3f}")
    print(f"BENCH experiment_parallel_eval_speedup {statistics.median(ratios):.2f}")


if __name__ == "__main__":
    sys.exit(main())
