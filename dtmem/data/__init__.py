"""Offline data: Minari datasets in, training windows (``dtmem.batch.Batch``) out.

Modules (import the one you need; this package imports nothing heavy):

    episodes    the ``Episode`` arrays and the data error classes
    minari_io   dataset root, atomic writer, lazy reader, content hash, input checks
    windows     pure window transforms: return-to-go, Atari bins, frame stacks, padding
    sampler     sharded, resumable, lazy multi-task sampler yielding ``Batch``
    dqn_replay  streaming importer for the DQN Replay dataset layout
"""
