"""Every metric name the pipelines log, in one place. Each is prefixed by its family
(``train/``, ``val/``, ``perf/``, ``eval/<task>/``, ``collect/``, ``system/`` is MLflow's own)
and is always logged with a step: the optimiser step for training, the checkpoint step for
evaluation and validation, the collection round for collection."""

from __future__ import annotations

__all__ = [
    "COLLECT_EPISODES",
    "COLLECT_EPISODES_PER_S",
    "COLLECT_RETURN_MEAN",
    "COLLECT_STEPS",
    "COLLECT_STEPS_PER_S",
    "COLLECT_SUCCESS_RATE",
    "EVAL_ACTORS_REPLACED",
    "EVAL_IQM_DQN",
    "EVAL_IQM_DQN_HIGH",
    "EVAL_IQM_DQN_LOW",
    "EVAL_IQM_HUMAN",
    "EVAL_IQM_HUMAN_HIGH",
    "EVAL_IQM_HUMAN_LOW",
    "EVAL_RETURN_MEAN",
    "EVAL_SUCCESS_RATE_MEAN",
    "FINETUNE_TRAINABLE_PARAMS",
    "MODEL_PARAMS",
    "PERF_EVAL_STEPS_PER_S",
    "PERF_PEAK_RSS_MB",
    "PERF_STEPS_PER_S",
    "PERF_SWEEP_EVAL_S",
    "PERF_SWEEP_LOG_S",
    "PERF_SWEEP_LOOP_S",
    "PERF_SWEEP_SETUP_S",
    "PERF_SWEEP_TRAIN_S",
    "PERF_SWEEP_TRIAL_S",
    "PERF_TOKENS_PER_S",
    "TRAIN_GRAD_NORM",
    "TRAIN_LOSS",
    "TRAIN_LOSS_ACTION",
    "TRAIN_LOSS_RETURN",
    "TRAIN_LOSS_REWARD",
    "TRAIN_LR",
    "VAL_LOSS",
    "VAL_LOSS_ACTION",
    "collect_metric",
    "collect_phase_metric",
    "eval_metric",
]

# Training, logged every ``log_every`` optimiser steps (step = optimiser step, 1-based).
TRAIN_LOSS = "train/loss"  # total loss (action + return + reward parts)
TRAIN_LOSS_ACTION = "train/loss_action"
TRAIN_LOSS_RETURN = "train/loss_return"  # Atari return-bin head; 0 otherwise
TRAIN_LOSS_REWARD = "train/loss_reward"  # Atari reward-class head; 0 otherwise
TRAIN_LR = "train/lr"
TRAIN_GRAD_NORM = "train/grad_norm"  # before clipping

# Throughput over the last logging interval (all workers together).
PERF_STEPS_PER_S = "perf/steps_per_s"
PERF_TOKENS_PER_S = "perf/tokens_per_s"  # valid (unpadded) steps x tokens per step
PERF_PEAK_RSS_MB = "perf/peak_rss_mb"  # the largest peak resident memory of any worker

# Held-out validation loss of a sweep trial (dtmem/sweep/trial.py), at every checkpoint step.
VAL_LOSS = "val/loss"  # total
VAL_LOSS_ACTION = "val/loss_action"

# A sweep trial's wall time by part (dtmem/sweep/trial.py), logged once at its last step.
PERF_SWEEP_SETUP_S = "perf/sweep_setup_s"  # trial start to training start
PERF_SWEEP_TRAIN_S = "perf/sweep_train_s"  # training, with the final evaluation
PERF_SWEEP_LOOP_S = "perf/sweep_loop_s"  # the training loop itself (in train_s)
PERF_SWEEP_EVAL_S = "perf/sweep_eval_s"  # the rollouts (in train_s)
PERF_SWEEP_LOG_S = "perf/sweep_log_s"  # after training: export and MLflow logging
PERF_SWEEP_TRIAL_S = "perf/sweep_trial_s"  # the whole trial

# Model size, logged once at step 0.
MODEL_PARAMS = "model/params"
FINETUNE_TRAINABLE_PARAMS = "model/trainable_params"

# Collection (dtmem/collect/driver.py), step = collection round.
COLLECT_EPISODES = "collect/episodes"
COLLECT_STEPS = "collect/steps"
COLLECT_RETURN_MEAN = "collect/return_mean"
COLLECT_SUCCESS_RATE = "collect/success_rate"
COLLECT_EPISODES_PER_S = "collect/episodes_per_s"
COLLECT_STEPS_PER_S = "collect/steps_per_s"

# Evaluation, one family per task: eval/<task>/<name>.
EVAL_NAMES: tuple[str, ...] = (
    "return_mean",  # mean raw return over all episodes
    "return_top3",  # mean of the best 3 episodes (MDT's report)
    "score_normalized",  # DQN- or human-normalised score, as the stage says
    "success_rate",  # Meta-World: fraction of episodes that succeed
    "score_dqn_normalized",  # Atari: DQN-normalised mean score (where the table defines it)
    "length_mean",  # mean episode length in agent steps
    "episodes",  # episodes counted (exactly the requested number)
)

# A sweep trial's evaluation summary (dtmem/sweep/trial.py), at its last step.
EVAL_RETURN_MEAN = "eval/return_mean"  # mean over evaluation tasks of the mean raw return


def eval_metric(task: str, name: str) -> str:
    """``eval/<task>/<name>``; ``task`` is sanitised to MLflow's allowed characters."""
    return f"eval/{_clean(task)}/{name}"


def collect_phase_metric(phase: str) -> str:
    """``perf/collect_<phase>_s``: where a collection call's wall time went
    (``dtmem.collect.driver.Timeline.breakdown``), logged once, at step 0."""
    return f"perf/collect_{_clean(phase)}_s"


def collect_metric(task: str, name: str) -> str:
    """``collect/<task>/<name>`` for per-task collection numbers."""
    return f"collect/{_clean(task)}/{name}"


def _clean(task: str) -> str:
    """One path segment: alphanumerics, ``_ - .`` kept, anything else (``/`` included) '_'."""
    return "".join(c if c.isalnum() or c in "_-." else "_" for c in task)


# Evaluation aggregates (dtmem.evaluation).
EVAL_IQM_HUMAN = "eval/iqm_human_normalized"  # IQM across games of human-normalised means
EVAL_IQM_HUMAN_LOW = "eval/iqm_human_normalized_ci_low"  # its bootstrap CI
EVAL_IQM_HUMAN_HIGH = "eval/iqm_human_normalized_ci_high"
EVAL_IQM_DQN = "eval/iqm_dqn_normalized"  # the same with DQN-normalised scores
EVAL_IQM_DQN_LOW = "eval/iqm_dqn_normalized_ci_low"
EVAL_IQM_DQN_HIGH = "eval/iqm_dqn_normalized_ci_high"
EVAL_SUCCESS_RATE_MEAN = "eval/success_rate_mean"  # mean over Meta-World tasks
EVAL_ACTORS_REPLACED = "eval/actors_replaced"  # dead actors replaced during the run
PERF_EVAL_STEPS_PER_S = "perf/eval_env_steps_per_s"  # agent steps of all episodes / wall time
