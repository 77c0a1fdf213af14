"""Offline data: Minari datasets in, training windows (``dtmem.batch.Batch``) out.

Modules (import the one you need; this package imports nothing heavy):

    episodes    the ``Episode`` arrays and the data error classes
    store       the datasets root, dataset ids, content hash, ``DatasetInfo``, disk checks
    writer      the atomic dataset writer
    reader      the lazy dataset reader (one-line errors for damaged files)
    checks      env, observation shape and content checks against a config
    minari_io   the four above in one import
    env_specs   the gymnasium ``EnvSpec`` a dataset records, so ``recover_environment()`` works
    stats       what travels with a model: state mean/std, action bounds, ``to_env_action``
    windows     pure window transforms: return-to-go, Atari bins, frame stacks, padding
    sources     a mixture of datasets as an index of episodes
    plan        which windows each worker yields in an epoch
    sampler     sharded, resumable, lazy multi-task sampler yielding ``Batch``
    dqn_replay  streaming importer for the DQN Replay dataset layout
    synthetic   small datasets in the real format for tests and benchmarks
"""
