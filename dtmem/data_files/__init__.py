"""Package data: ``atari_reference_scores.csv`` (random, human and DQN scores of the 57 Atari
games) and ``atari_reference_scores.md`` (where each number comes from). Read them through
``dtmem.scores``."""
