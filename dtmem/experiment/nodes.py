"""The nodes each kind of entry in the experiment file declares, with their edges.

``_Builder`` reads the stage YAMLs an experiment file names, validates each as its command
would, and adds one ``Node`` per stage run (datasets, pretraining, fine-tuning,
evaluations, memory probes, sweeps), wired to the nodes whose outputs it reads.
Explicit ``after:`` edges, the order and the keys are ``dtmem.experiment.dag``'s.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, TypeVar

from dtmem.config.base import ConfigError, FrozenConfig, load_config
from dtmem.experiment.plan import PLACEHOLDER, ExperimentError, Node
from dtmem.experiment.spec import ExperimentSpec, StageRef

C = TypeVar("C", bound=FrozenConfig)


def _load(cls: type[C], path: Path, overrides: list[str], where: str) -> C:
    try:
        return load_config(cls, path, overrides)
    except ConfigError as exc:
        raise ExperimentError(f"{where}: {exc}") from None


class _Builder:
    def __init__(self, spec: ExperimentSpec, path: Path) -> None:
        self.spec = spec
        self.path = path
        self.base = path.parent
        self.nodes: dict[str, Node] = {}
        self.producer: dict[str, str] = {}  # dataset id -> node name

    def where(self, field_: str) -> str:
        return f"{self.path}: {field_}"

    def file(self, p: Path) -> Path:
        return p if p.is_absolute() else (self.base / p)

    def add(self, node: Node) -> None:
        self.nodes[node.name] = node

    def data_upstream(self, ids: list[str], field_: str) -> tuple[str, ...]:
        ups = []
        for i, dataset_id in enumerate(ids):
            if dataset_id not in self.producer:
                raise ExperimentError(
                    f"{self.where(field_)}: data.datasets.{i}.id: {dataset_id!r} is made by no "
                    f"entry of datasets ({', '.join(sorted(self.producer)) or 'none'})"
                )
            ups.append(self.producer[dataset_id])
        return tuple(dict.fromkeys(ups))

    # -- datasets ------------------------------------------------------------------------

    def datasets(self) -> None:
        from dtmem.config.collect import CollectConfig

        for name, entry in self.spec.datasets.items():
            field_ = f"datasets.{name}"
            if entry.collect is not None:
                cfg = self.stage(CollectConfig, entry.collect, [], f"{field_}.collect")
                node = Node(
                    f"collect/{name}",
                    "collect",
                    cfg,
                    (),
                    {},
                    {"CPU": cfg.num_actors * cfg.actor_cpus},
                    f"{field_}.collect",
                    produces=tuple(cfg.dataset_ids()),
                )
            elif entry.minari is not None:
                node = Node(
                    f"dataset/{name}",
                    "dataset",
                    entry.minari,
                    (),
                    {},
                    {"CPU": 0.0},
                    f"{field_}.minari",
                    produces=tuple(entry.minari.ids),
                )
            else:
                assert entry.dqn_replay is not None
                node = Node(
                    f"import/{name}",
                    "import",
                    entry.dqn_replay,
                    (),
                    {},
                    {"CPU": 1.0},
                    f"{field_}.dqn_replay",
                    produces=(entry.dqn_replay.dataset_id,),
                )
            for dataset_id in node.produces:
                if dataset_id in self.producer:
                    raise ExperimentError(
                        f"{self.where(node.declared)}: {dataset_id!r} is also made by "
                        f"{self.producer[dataset_id]}"
                    )
                self.producer[dataset_id] = node.name
            self.add(node)

    def stage(self, cls: type[C], ref: StageRef, extra: list[str], field_: str) -> C:
        return _load(
            cls, self.file(ref.config), [*ref.overrides, *extra], self.where(f"{field_}.config")
        )

    # -- training ------------------------------------------------------------------------

    def pretrains(self) -> None:
        from dtmem.config.train import PretrainConfig

        for arm, spec in self.spec.arms.items():
            for seed in self.spec.seeds:
                field_ = f"arms.{arm}.pretrain"
                cfg = self.stage(
                    PretrainConfig, spec.pretrain, [f"seed={seed}", "registry.name=null"], field_
                )
                ids = [d.id for d in cfg.data.datasets]
                self.add(
                    Node(
                        f"pretrain/{arm}/s{seed}",
                        "pretrain",
                        cfg,
                        self.data_upstream(ids, field_),
                        {"arm": arm, "seed": str(seed), "ft_mode": "none"},
                        _train_resources(cfg),
                        f"arms.{arm}",
                    )
                )

    def finetune_config(
        self, task: str, seed: int, mode: str, arm: str | None, up: str
    ) -> tuple[Any, str]:
        """The fine-tune config of ``task`` at ``seed`` in ``mode`` with ``arm``'s own
        overrides (pretrained: a placeholder for ``up``), and the field it comes from."""
        from dtmem.config.train import FinetuneConfig

        ft = self.spec.finetune
        assert ft is not None
        per_task = ft.tasks.get(task)
        config = per_task.config if per_task and per_task.config else ft.config
        field_ = f"finetune.tasks.{task}" if per_task else "finetune"
        arm_overrides = self.spec.arms[arm].finetune_overrides if arm else ()
        if arm_overrides:
            field_ = f"arms.{arm}.finetune_overrides / {field_}"
        overrides = [
            *ft.overrides,
            *(per_task.overrides if per_task else ()),
            *arm_overrides,
            f"mode={mode}",
            f"seed={seed}",
            f"pretrained={PLACEHOLDER}{up}",
            "registry.name=null",
        ]
        return _load(FinetuneConfig, self.file(config), overrides, self.where(field_)), field_

    def finetunes(self) -> None:
        ft = self.spec.finetune
        if ft is None:
            return
        for arm in ft.arms or tuple(self.spec.arms):
            for seed in self.spec.seeds:
                for task in self.spec.held_out_tasks:
                    up = f"pretrain/{arm}/s{seed}"
                    for mode in ft.modes:
                        cfg, field_ = self.finetune_config(task, seed, mode, arm, up)
                        ids = [d.id for d in cfg.data.datasets] if mode != "frozen" else []
                        labels = {"arm": arm, "seed": str(seed), "task": task, "ft_mode": mode}
                        self.add(
                            Node(
                                f"finetune/{arm}/s{seed}/{task}/{mode}",
                                "finetune",
                                cfg,
                                (up, *self.data_upstream(ids, field_)),
                                labels,
                                _train_resources(cfg) if mode != "frozen" else {"CPU": 0.0},
                                field_,
                            )
                        )

    # -- evaluation ----------------------------------------------------------------------

    def evaluations(self) -> None:
        from dtmem.config.evaluate import EvaluateConfig

        ev = self.spec.evaluate
        if ev is None:
            return
        path = self.file(ev.config)
        base = _load(EvaluateConfig, path, list(ev.overrides), self.where("evaluate.config"))
        section = "metaworld.tasks" if base.metaworld is not None else "atari.games"
        train, held = list(self.spec.train_tasks), list(self.spec.held_out_tasks)

        def node(name: str, model: str, tasks: list[str], labels: dict[str, str]) -> None:
            on_train = labels["eval_kind"] in ("pretrained", "forgetting")
            overrides = [
                *ev.overrides,
                *(ev.train_task_overrides if on_train else ()),
                f"checkpoint={PLACEHOLDER}{model}",
                f"{section}={json.dumps(tasks)}",
            ]
            cfg = _load(EvaluateConfig, path, overrides, self.where("evaluate"))
            self.add(
                Node(
                    name,
                    "evaluate",
                    cfg,
                    (model,),
                    labels,
                    {"CPU": cfg.num_actors * cfg.cpus_per_actor},
                    "evaluate",
                )
            )

        for arm in self.spec.arms:
            for seed in self.spec.seeds:
                pre = f"pretrain/{arm}/s{seed}"
                common = {"arm": arm, "seed": str(seed)}
                if ev.pretrained:
                    node(
                        f"evaluate/{arm}/s{seed}/pretrained",
                        pre,
                        train,
                        {**common, "ft_mode": "none", "eval_kind": "pretrained"},
                    )
                for task in held if ev.zero_shot else []:
                    node(
                        f"evaluate/{arm}/s{seed}/{task}/zero_shot",
                        pre,
                        [task],
                        {**common, "task": task, "ft_mode": "none", "eval_kind": "zero_shot"},
                    )
        for name, baseline in self.spec.baselines.items():
            for seed in self.spec.seeds:
                for task in held:
                    self.baseline_evaluation(name, baseline.kind, seed, task, base, section)
        ft_names = [n for n in self.nodes.values() if n.stage == "finetune"]
        for ft in ft_names:
            labels = dict(ft.labels)
            prefix = "evaluate/" + ft.name[len("finetune/") :]
            if ev.memory and labels["ft_mode"] != "frozen":
                self.memory_probe(ft)
            if ev.finetuned:
                node(
                    f"{prefix}/finetuned",
                    ft.name,
                    [labels["task"]],
                    {**labels, "eval_kind": "finetuned"},
                )
            if ev.forgetting:
                node(f"{prefix}/forgetting", ft.name, train, {**labels, "eval_kind": "forgetting"})

    def baseline_evaluation(
        self, name: str, kind: str, seed: int, task: str, base: Any, section: str
    ) -> None:
        """``evaluate/<name>/s<seed>/<task>/finetuned``: the baseline fitted on the
        demonstrations the seed's fine-tunes of ``task`` train on (the mode does not change
        the data), evaluated on ``task`` like a fine-tuned model, with its own episodes per seed."""
        from dtmem.config.evaluate import EvaluateConfig

        ft_cfg, _ = self.finetune_config(task, seed, "full", None, f"baselines/{name}")
        field_ = f"baselines.{name}"
        dumped = base.model_dump(mode="json")
        dumped["checkpoint"] = None
        # Every seed's fine-tunes see the same demonstrations (data.seed), so the baseline's
        # seeds differ only by their episodes: the evaluation seed is offset by the seed.
        dumped["seed"] = base.seed + seed
        dumped["baseline"] = {"kind": kind, "data": ft_cfg.data.model_dump(mode="json")}
        group, key = section.split(".")
        dumped[group][key] = [task]
        try:
            cfg = EvaluateConfig.model_validate(dumped)
        except ValueError as exc:
            raise ExperimentError(f"{self.where(field_)}: {exc}".splitlines()[0]) from None
        ids = [d.id for d in ft_cfg.data.datasets]
        self.add(
            Node(
                f"evaluate/{name}/s{seed}/{task}/finetuned",
                "evaluate",
                cfg,
                self.data_upstream(ids, field_),
                {
                    "arm": name,
                    "seed": str(seed),
                    "task": task,
                    "ft_mode": "none",
                    "eval_kind": "finetuned",
                },
                {"CPU": cfg.num_actors * cfg.cpus_per_actor},
                field_,
            )
        )

    def memory_probe(self, ft: Node) -> None:
        """``probe/<arm>/s<seed>/<task>/<mode>``: the memory's addressing before and after the
        fine-tune ``ft`` (arms whose model has a memory only)."""
        from dtmem.experiment.memory_probe import STAGE, MemoryProbeConfig

        pre = ft.upstream[0]
        if not self.nodes[pre].config.model.memory:  # type: ignore[attr-defined]
            return
        cfg = MemoryProbeConfig(
            pretrained=f"{PLACEHOLDER}{pre}",
            finetuned=f"{PLACEHOLDER}{ft.name}",
            task=ft.labels["task"],
            mode=ft.labels["ft_mode"],
            data=ft.config.data,  # type: ignore[attr-defined]
            tracking=ft.config.tracking,  # type: ignore[attr-defined]
        )
        self.add(
            Node(
                "probe/" + ft.name[len("finetune/") :],
                STAGE,
                cfg,
                (pre, ft.name),
                dict(ft.labels),
                {"CPU": 1.0},
                "evaluate.memory",
            )
        )

    # -- sweeps --------------------------------------------------------------------------

    def sweeps(self) -> None:
        from dtmem.config.sweep import SweepConfig
        from dtmem.config.train import FinetuneConfig, PretrainConfig
        from dtmem.sweep.plan import resolve_base

        for name, spec in self.spec.sweeps.items():
            field_ = f"sweeps.{name}"
            path = self.file(spec.config)
            cfg = _load(SweepConfig, path, list(spec.overrides), self.where(f"{field_}.config"))
            base_path = resolve_base(cfg.base, path.parent)
            cls: type[PretrainConfig | FinetuneConfig] = (
                PretrainConfig if cfg.stage == "pretrain" else FinetuneConfig
            )
            base = _load(cls, base_path, list(cfg.overrides), self.where(f"{field_}.config: base"))
            cfg = cfg.model_copy(update={"base": str(base_path)})
            ids = [d.id for d in base.data.datasets]
            trial = _train_resources(base)
            trials = cfg.resources.max_concurrent_trials
            self.add(
                Node(
                    f"sweep/{name}",
                    "sweep",
                    cfg,
                    self.data_upstream(ids, field_),
                    {},
                    {k: v * trials for k, v in trial.items()},
                    field_,
                    key_extra={"base": base.model_dump(mode="json")},
                )
            )


def _train_resources(cfg: Any) -> dict[str, float]:
    """Ray Train: num_workers x (CPUs, a GPU each when use_gpu); in-process: one CPU."""
    s = cfg.scaling
    if not s.on_ray:
        return {"CPU": 1.0, **({"GPU": 1.0} if s.use_gpu else {})}
    out = {"CPU": s.num_workers * s.cpus_per_worker}
    if s.use_gpu:
        out["GPU"] = float(s.num_workers)
    return out
