"""Ray Tune sweeps over dtmem's stage configs: the MACHINERY behind ``dtmem sweep``. The sweep
DEFINITIONS (one YAML search space per sweep) and the entry point ``tuning.sweep.run_sweep``
live in the top-level ``tuning/`` package; this package is what they run on.

Modules (import the one you need; this package imports nothing, and Ray and MLflow are
imported only inside the functions that use them):

    space       search spaces: parsed and checked against the stage's config before any
                trial; the trials' names (``slots=64,seed=1``)
    base        the sweep's error, reported metric names, directory layout, JSON files, events
    plan        ``plan_sweep``: every check that needs no Ray; ``TrialSpec``, ``SweepPlan``,
                the stages a sweep runs (``STAGES``)
    validation  the held-out validation windows and their loss
    tracking    the trials' nested MLflow runs (no credential in params, tags or config)
    trial       ``run_trial`` (the Tune trainable), ``TrialReporter``, the evaluation
    driver      the ``Tuner``, its callback, the cluster's room for trials, resume checks
    results     the results rows, best trial, bootstrap CIs, plots, report on MLflow, summary

A trial (``run_trial``, a Tune function trainable) trains one config of the stage:

- ``executor: local`` (the default for one worker): the single-process training loop
  (``dtmem.training.loop.run_worker``) runs inside the trial and the trial reports with
  ``tune.report``; no Ray Train. Tune reserves the worker's CPUs (``scaling.cpus_per_worker``)
  and torch uses that many threads. Tune reuses the trial's actor for the next trial
  (``reuse_actors``), so only the first trial of each actor pays for a process and its
  imports (``benchmarks/bench_sweep.py``: ``sweep_overhead_share``).
- ``executor: train`` (several workers): the trial fits a Ray Train ``TorchTrainer``
  (``dtmem.training.launch.launch``) whose ``RunConfig`` carries ``TuneReportCallback``; the
  workers' ``ray.train.report`` reach Tune through it (``Tuner(TorchTrainer(...))`` is refused
  by Ray 2.60's Train V2). Tune reserves ``resources.driver_cpus`` for the trial; Ray Train
  reserves the workers' CPUs in a placement group of its own (Train V2 never schedules
  workers into the trial's placement group, so a PlacementGroupFactory with worker bundles
  would reserve them twice and never start). Concurrency is therefore capped at cluster
  CPUs // (driver_cpus + workers' CPUs).
  Ray Train's own restarts are off (``max_failures=0``, controller limit 0, not Ray's -1 =
  forever); Tune restarts a failed trial (``resources.max_failures``) and the loop resumes
  from the trial's last checkpoint.

What a trial reports, at every training checkpoint: ``step`` (optimiser steps), ``val/loss``
and ``val/loss_action`` (the held-out validation loss: windows of episodes the trial does
not train on, the same windows at every checkpoint) and ``train/loss``. ASHA judges trials
on the validation loss because it exists at every checkpoint, costs a few batches and is
deterministic, so a trial is stopped for being worse, not unlucky; a rollout score needs
tens of episodes per point to be that stable (Meta-World success is 0/1 per episode) and
costs minutes, so rollouts (``evaluation``) run once, on each finished trial's final model,
and give the ``eval/`` scores of the results table and the plots. The plots' score
(``plot.score``) is also what picks the best trial (``results``).

Terminal: Ray's and Tune's own output (trial tables, the TensorBoard hint, experiment
snapshots) stays out unless ``verbose``; the sweep prints its own table and summary.

Early-stopped trials give their resources back: Tune frees the trial's own reservation; the
Ray Train workers' placement group, created by the trial's Train controller, would outlive
the killed trial (its lifetime is the job's; Ray's cleaner for it needs the dashboard's
state API, which tests and many clusters run without), so the driver removes it when Tune
stops the trial (``_SweepCallback``). Rank 0 records its id in the trial's directory.

MLflow: one run per sweep (stage "sweep"; itself a child of ``tracking.parent_run_id`` when
the experiment runner gives one) and a nested run per trial (tag ``mlflow.parentRunId``;
``dtmem.trial_id``), named by what the trial varies (``slots=64,seed=1``, also the ``trial``
column of the results table), holding the trial's config as params (URIs without
credentials), the training curves (the loop logs them; Train V2 keeps only metrics
reported with a checkpoint), the validation curve and the evaluation. The trial finds its
run by trial id, so a restarted trial continues the same run (and the loop skips steps
already logged).
Early-stopped trials' runs end KILLED (tag ``dtmem.trial_status=early_stopped``).

Ctrl-C, SIGTERM (``ray job stop``) or a study's stop: Tune stops the running trials and
saves its state, then the sweep raises ``KeyboardInterrupt`` (``Terminated`` for SIGTERM;
``driver.tune_interrupts``): its run and the stopped trials' end KILLED
(``dtmem.trial_status=interrupted``), no results table is written, and ``--resume`` finishes
it. A second signal stops at once.

Resume: Tune's state lives in ``<storage_dir>/<name>/tune`` and every trial's checkpoints in
``<storage_dir>/<name>/runs/<trial_id>``, both named deterministically, so after the driver
is killed ``--resume`` restores the experiment: finished trials are not run again (a trial
whose ``sweep_result.json`` exists only re-reports it, for the case where Tune's last
experiment snapshot predates its end), unfinished ones continue from their last checkpoint,
in the same MLflow runs.

Timing (``benchmarks/bench_sweep.py``): ``events.jsonl`` in the sweep directory records the
driver's view (trial scheduled/started/completed) and the trial's (setup, training loop,
evaluation, logging), so a trial's wall time can be split into Ray start-up and scheduling
and the training itself.

"""
