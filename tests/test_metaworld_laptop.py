"""The laptop study's draft plans as issue 13 asks: ML10's 10 train and 5 test tasks, 3 seeds,
arms of the same size, 10 demonstrations per held-out task, every evaluation kind."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

from dtmem.config.evaluate import EvaluateConfig
from dtmem.config.train import FinetuneConfig, PretrainConfig
from dtmem.experiment.dag import build_plan
from dtmem.model.builder import build_model
from dtmem.model.lora import adapter_parameters_per_rank, rank_for_budget

FILE = Path(__file__).resolve().parents[1] / "pipelines" / "experiments" / "metaworld-laptop.yaml"
ML10_TRAIN = {
    "reach-v3", "push-v3", "pick-place-v3", "door-open-v3", "drawer-close-v3",
    "button-press-topdown-v3", "peg-insert-side-v3", "window-open-v3", "sweep-v3",
    "basketball-v3",
}  # fmt: skip
ML10_TEST = {"drawer-open-v3", "door-close-v3", "shelf-place-v3", "sweep-into-v3", "lever-pull-v3"}


def test_plan_has_ml10_three_seeds_and_every_measure():
    plan = build_plan(FILE)
    spec = plan.spec
    assert set(spec.train_tasks) == ML10_TRAIN and set(spec.held_out_tasks) == ML10_TEST
    assert len(spec.seeds) >= 3
    stages = Counter(n.stage for n in plan.nodes.values())
    arms, seeds, modes = len(spec.arms), len(spec.seeds), 2
    assert stages["pretrain"] == arms * seeds
    assert stages["finetune"] == arms * seeds * 5 * modes
    kinds = Counter(n.labels.get("eval_kind") for n in plan.nodes.values() if n.stage == "evaluate")
    assert kinds == {
        "pretrained": arms * seeds,
        "zero_shot": arms * seeds * 5,
        "finetuned": arms * seeds * 5 * modes + seeds * 5,  # + the 1-NN baseline
        "forgetting": arms * seeds * 5 * modes,
    }
    for node in plan.nodes.values():
        if node.stage == "finetune":  # its own task's data, 10% of 100 episodes
            assert isinstance(node.config, FinetuneConfig)
            (dataset,) = node.config.data.datasets
            assert dataset.env == node.labels["task"] and node.labels["task"] in dataset.id
            assert node.config.data.episode_fraction == 0.1


def test_arms_have_the_same_parameter_count_within_2_percent():
    plan = build_plan(FILE)
    models = {}
    for node in plan.nodes.values():
        if node.stage == "pretrain":
            assert isinstance(node.config, PretrainConfig)
            models[node.labels["arm"]] = build_model(node.config.model)
    counts = {arm: sum(p.numel() for p in m.parameters()) for arm, m in models.items()}
    assert set(counts) == {"dtmem", "dt"}
    assert abs(counts["dtmem"] - counts["dt"]) / counts["dtmem"] < 0.02, counts
    # Each arm's LoRA fine-tunes: DT-Mem's on the memory, the DT's on attention and MLP at the
    # rank the yaml states, and the two trainable budgets within one rank step of each other.
    lora = {
        n.labels["arm"]: n.config.lora
        for n in plan.nodes.values()
        if n.stage == "finetune" and n.labels["ft_mode"] == "lora"
        and isinstance(n.config, FinetuneConfig)
    }  # fmt: skip
    assert lora["dtmem"].modules == "memory" and lora["dt"].modules == "attention_mlp"
    budget = lora["dtmem"].rank * adapter_parameters_per_rank(models["dtmem"], "memory")
    step = adapter_parameters_per_rank(models["dt"], "attention_mlp")
    dt_budget = lora["dt"].rank * step
    assert abs(dt_budget - budget) <= step, (budget, dt_budget)
    assert lora["dt"].rank == rank_for_budget(models["dt"], "attention_mlp", budget)
    assert (budget, dt_budget) == (23_088, 24_192)  # the numbers the yaml's comment states


def test_knn_baseline_plays_on_each_held_out_task_from_its_fine_tune_data():
    plan = build_plan(FILE)
    knn = [n for n in plan.nodes.values() if n.labels.get("arm") == "knn"]
    assert {(n.labels["seed"], n.labels["task"]) for n in knn} == {
        (str(s), t) for s in plan.spec.seeds for t in ML10_TEST
    }
    ft_data = {
        n.labels["task"]: n.config.data
        for n in plan.nodes.values()
        if n.stage == "finetune" and isinstance(n.config, FinetuneConfig)
    }
    seeds = set()
    for node in knn:
        cfg = node.config
        assert isinstance(cfg, EvaluateConfig) and cfg.checkpoint is None
        assert cfg.baseline is not None and cfg.baseline.kind == "nearest_neighbour"
        assert cfg.baseline.data == ft_data[node.labels["task"]]
        assert cfg.metaworld is not None and cfg.metaworld.tasks == (node.labels["task"],)
        assert node.labels["ft_mode"] == "none" and node.labels["eval_kind"] == "finetuned"
        assert node.upstream == ("collect/ml10",)
        seeds.add(cfg.seed)
    assert len(seeds) == len(plan.spec.seeds)  # each seed its own episodes
