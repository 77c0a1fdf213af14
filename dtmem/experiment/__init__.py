"""Experiments: one declarative file (``pipelines/experiments/*.yaml``) runs a whole study as
a cached, resumable DAG of the existing stages, on Ray, with lineage in MLflow.

    spec.py     the file's frozen model          dag.py     build_plan: edges, order, keys
    plan.py     Node, Plan, ExperimentError      nodes.py   the nodes each file entry declares
    keys.py     node keys and the code version   cache.py   finished runs whose outputs verify
    runner.py   schedules and runs the DAG       status.py  node states, from MLflow alone
    stages.py   one node: bind its config, run its stage
    report.py   the comparison table (MLflow alone)

The MLflow tags below are the interface between the runner and whatever reads its runs
(the report, ``experiment status``, a user in the UI); keep them exactly.
"""

from __future__ import annotations

__all__ = [
    "EVAL_KINDS",
    "EXPERIMENT_ARTIFACT",
    "NODES_ARTIFACT",
    "STAGE",
    "TAG_ARM",
    "TAG_CODE_VERSION",
    "TAG_EVAL_KIND",
    "TAG_EXPERIMENT",
    "TAG_EXPERIMENT_RUN",
    "TAG_FT_MODE",
    "TAG_NODE",
    "TAG_NODE_KEY",
    "TAG_OUTPUTS",
    "TAG_OUTPUT_PREFIX",
    "TAG_REPLACES",
    "TAG_SEED",
    "TAG_STAGE",
    "TAG_TASK",
    "TAG_UPSTREAM",
]

STAGE = "experiment"  # dtmem.stage of the parent run

# On the parent run (one per `dtmem experiment run`) and on every node run.
TAG_STAGE = "dtmem.stage"
TAG_EXPERIMENT = "dtmem.experiment"  # the experiment's name
TAG_CODE_VERSION = "dtmem.code_version"  # hash of the dtmem/pipelines/tuning sources
# On every node run.
TAG_EXPERIMENT_RUN = "dtmem.experiment_run_id"  # the parent run that ran (or re-ran) it
TAG_NODE = "dtmem.node"  # e.g. finetune/dtmem/s0/bin-picking-v3/lora
TAG_NODE_KEY = "dtmem.node_key"
TAG_UPSTREAM = "dtmem.upstream"  # comma-separated run ids of the upstream nodes
TAG_ARM = "dtmem.arm"
TAG_SEED = "dtmem.seed"
TAG_TASK = "dtmem.task"  # the held-out task of a fine-tune and of its evaluations
TAG_FT_MODE = "dtmem.ft_mode"  # lora | full | frozen | none
TAG_EVAL_KIND = "dtmem.eval_kind"  # one of EVAL_KINDS
TAG_REPLACES = "dtmem.replaces"  # the failed (or unverifiable) run this one replaces
TAG_OUTPUTS = "dtmem.outputs"  # number of recorded outputs; set last: the node is complete
TAG_OUTPUT_PREFIX = "dtmem.output."  # dtmem.output.<i>: JSON {kind, path, digest, id}

EVAL_KINDS = ("pretrained", "zero_shot", "finetuned", "forgetting")

EXPERIMENT_ARTIFACT = "experiment.yaml"  # the experiment file, on the parent run
NODES_ARTIFACT = "nodes.json"  # on the parent run: node -> {key, state, run_id}, kept current
