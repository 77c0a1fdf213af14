"""Offline data collection: behaviour policies, the episode recorder and its workers.

Modules (import the one you need; this package imports nothing heavy):

    policies     behaviour policies (Meta-World expert with noise, random, epsilon mixture),
                 per-episode seeds, the ``BehaviourPolicy`` protocol; no Ray
    rllib_agent  train RLlib agents on Atari with checkpoints, and act from a checkpoint
    actors       ``record_episodes`` (the one episode loop, ``dtmem.rollout.run_episodes``,
                 with a recorder: policy + vector env -> ``Episode``s) and ``CollectWorker``
                 (owns envs and policies per task); no Ray
    driver       the collection driver: fingerprints, per-task state, chunk scheduling on the
                 actor pool shared with evaluation (``dtmem.actor_pool``), in-order dataset
                 writers, the summary table

The entry point that composes them is ``pipelines/collect.py``.
"""
