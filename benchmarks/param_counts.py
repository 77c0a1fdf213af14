"""Parameter counts of the paper-size models (spec: DT-Mem 20M, ~13M transformer + ~7M memory).

python benchmarks/param_counts.py
"""

from __future__ import annotations

from dtmem.config.model import MemoryConfig, ModelConfig
from dtmem.model import build_model
from dtmem.model.lora import parameter_counts


def paper_config(slots: int | None) -> ModelConfig:
    return ModelConfig(
        encoder="patch",
        action_kind="discrete",
        num_actions=18,
        returns="atari_bins",
        context=28,
        n_layer=4,
        n_head=8,
        d_model=512,
        memory=MemoryConfig(slots=slots, heads=8) if slots else None,
    )


def main() -> None:
    print(f"{'model':<28} {'total':>12} {'memory':>12} {'rest':>12}")
    for slots in (None, 1024, 1800):
        model = build_model(paper_config(slots))
        total = parameter_counts(model).total
        memory = sum(p.numel() for n, p in model.named_parameters() if ".memory." in n)
        name = f"DT-Mem, {slots} slots" if slots else "plain DT"
        print(f"{name:<28} {total:>12,} {memory:>12,} {total - memory:>12,}")
    print("paper: DT-Mem 20M (about 13M transformer + 7M memory); MDT 200M")


if __name__ == "__main__":
    main()
