"""The constants of the experiment plan's cost model (``dtmem.experiment.estimate``),
measured with the laptop study's own stage configs (pipelines/configs/metaworld-laptop/) on
this machine, each as the difference of two whole stage runs of different sizes (so the
fixed start-up cost is left out of the rate and shown apart):

- collect: the noisy scripted expert on drawer-open-v3, 8 and 24 episodes of 250 steps
  (after a warm-up run of 2);
- pretrain: DT-Mem and the plain DT of the study on that data, 20 and 60 steps;
- evaluate: the pretrained DT-Mem on drawer-open-v3, 10 and 20 episodes of 250 steps.

    python benchmarks/bench_laptop_costs.py

Prints last, one per line: ``BENCH collect_env_steps_per_s``, ``train_tokens_per_s_dtmem``,
``train_tokens_per_s_dt``, ``eval_env_steps_per_s`` and ``stage_startup_s`` (median of the
intercepts).
"""

from __future__ import annotations

import json
import os
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

CONFIGS = Path(__file__).resolve().parents[1] / "pipelines" / "configs" / "metaworld-laptop"
TASK = "drawer-open-v3"
STEPS = 250


def _timed(fn: Callable[[Any], Any], cfg: Any) -> tuple[float, Any]:
    t0 = time.perf_counter()
    out = fn(cfg)
    return time.perf_counter() - t0, out


def _line(a: tuple[float, float], b: tuple[float, float]) -> tuple[float, float]:
    """(rate in units per second, intercept in seconds) through (units, seconds) a and b."""
    (ua, ta), (ub, tb) = a, b
    per_unit = (tb - ta) / (ub - ua)
    return 1.0 / per_unit, ta - ua * per_unit


def main() -> None:
    from dtmem.config.base import load_config
    from dtmem.config.collect import CollectConfig
    from dtmem.config.evaluate import EvaluateConfig
    from dtmem.config.train import PretrainConfig
    from dtmem.ray_session import ray_session
    from pipelines.collect import run_collect
    from pipelines.evaluate import run_evaluate
    from pipelines.pretrain import run_pretrain

    tmp = Path(tempfile.mkdtemp(prefix="bench-laptop-"))
    os.environ["MLFLOW_TRACKING_URI"] = f"sqlite:///{tmp / 'mlflow.db'}"
    os.environ["MINARI_DATASETS_PATH"] = str(tmp / "datasets")
    os.chdir(tmp)
    results: dict[str, float] = {}
    startups = []
    with ray_session():
        points = []
        for n in (2, 8, 24):  # the config's 2 actors x 4 envs: one and three rounds of episodes
            collect_cfg = load_config(
                CollectConfig,
                CONFIGS / "collect.yaml",
                [f"tasks=[{TASK}]", f"episodes_per_task={n}", f'dataset.name="{{task}}-{n}"'],
            )
            wall, _ = _timed(run_collect, collect_cfg)
            points.append((n * STEPS, wall))
        # the first run is a warm-up (imports, Ray's first actors): left out
        results["collect_env_steps_per_s"], start = _line(*points[1:])
        startups.append(start)

        data = json.dumps([{"id": f"dtmem/ml10/{TASK}-24-v0", "env": TASK}])
        checkpoint = ""
        for arm, extra in (("dtmem", []), ("dt", ["model.memory=null", "model.d_model=168"])):
            points = []
            for steps in (20, 60):
                train_cfg = load_config(
                    PretrainConfig,
                    CONFIGS / "pretrain.yaml",
                    [
                        *extra,
                        f"data.datasets={data}",
                        f"optim.max_steps={steps}",
                        f"checkpoint.every_steps={steps}",
                        f"run_name=bench-{arm}-{steps}",
                        "progress=false",
                    ],
                )
                wall, trained = _timed(run_pretrain, train_cfg)
                tokens = steps * train_cfg.data.batch_size * train_cfg.data.context
                points.append((tokens, wall))
                if arm == "dtmem":
                    checkpoint = str(trained.checkpoint_dir)
            results[f"train_tokens_per_s_{arm}"], start = _line(*points)
            startups.append(start)

        points = []
        for n in (10, 20):  # the config's 10 envs: one and two rounds of episodes
            eval_cfg = load_config(
                EvaluateConfig,
                CONFIGS / "evaluate.yaml",
                [f"checkpoint={checkpoint}", f"metaworld.episodes={n}"],
            )
            wall, _ = _timed(run_evaluate, eval_cfg)
            points.append((n * STEPS, wall))
        results["eval_env_steps_per_s"], start = _line(*points)
        startups.append(start)
    results["stage_startup_s"] = statistics.median(startups)
    for name, value in results.items():
        print(f"BENCH {name} {value:.1f}")


if __name__ == "__main__":
    main()
