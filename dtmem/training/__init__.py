"""Training machinery shared by pretraining and fine-tuning: optimiser and schedule
(``optim``), atomic checkpoints and model export/loading (``checkpoint``), the per-worker
training loop that runs with or without Ray (``loop``), launching on Ray Train (``launch``),
pre-flight checks (``validate``) and reporting (``report``).

Imported by pipelines only: these modules import torch at the top.
"""
