"""Sweep DEFINITIONS: one YAML search space per sweep (``tuning/*.yaml``: ``smoke.yaml``,
``memory_slots.yaml``, ``lora.yaml``) and the entry point ``tuning.sweep`` (``dtmem sweep
CONFIG``, ``run_sweep(cfg) -> SweepResult``). The MACHINERY they run on (search spaces,
trials, Tune driver, MLflow runs, results and plots) is the package ``dtmem.sweep``; the
config schema is ``dtmem.config.sweep.SweepConfig``."""
