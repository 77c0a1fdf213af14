"""Training, shared by pretraining and fine-tuning, read top-down from ``stage.py`` (the
recipe): ``plan`` (what each stage builds, after the ``checks``), ``data`` (training and
held-out episodes), ``loop`` (one worker's loop with checkpoint and resume; ``optim``,
``checkpoint``, ``monitor`` for metrics and progress, ``hooks`` for validation loss and
rollouts, ``faults`` for the tests' fault injection), ``launch`` (this process or Ray Train),
``finish`` (the logged model, the registry, ``result.json``) and ``report`` (what a person
sees).

Imported by pipelines only: these modules import torch at the top.
"""
