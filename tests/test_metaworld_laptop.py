"""The laptop study's draft plans as issue 13 asks: ML10's 10 train and 5 test tasks, 3 seeds,
arms of the same size, 10 demonstrations per held-out task, every evaluation kind."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

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
        "finetuned": arms * seeds * 5 * modes,
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
    # The file's header: the DT's LoRA on attention and MLP at rank 3 matches DT-Mem's memory
    # LoRA at the fine-tune config's rank.
    ft = next(n.config for n in plan.nodes.values() if n.stage == "finetune")
    assert isinstance(ft, FinetuneConfig) and ft.lora.modules == "memory"
    budget = ft.lora.rank * adapter_parameters_per_rank(models["dtmem"], "memory")
    assert budget == 23_088
    assert rank_for_budget(models["dt"], "attention_mlp", budget) == 3
    assert 3 * adapter_parameters_per_rank(models["dt"], "attention_mlp") == 24_192
