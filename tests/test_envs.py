"""Atari and Meta-World evaluation envs: names, action maps, protocol settings, seeding."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

from dtmem.envs.atari import (
    ATARI_GAMES,
    FULL_ACTION_NAMES,
    OBSERVATION_SHAPE,
    UnknownGameError,
    canonical_game,
    full_to_minimal,
    legal_actions,
    make_atari_env,
    minimal_to_full,
    rom_id,
)
from dtmem.envs.metaworld import (
    ML45_TEST_TASKS,
    ML45_TRAIN_TASKS,
    UnknownTaskError,
    check_task,
    expert_policy,
    make_metaworld_env,
)


def test_env_modules_import_light():
    code = (
        "import sys, dtmem.envs, dtmem.envs.atari, dtmem.envs.metaworld, dtmem.scores\n"
        "heavy = [m for m in ('torch', 'ale_py', 'metaworld', 'mujoco', 'gymnasium') "
        "if m in sys.modules]\n"
        "assert not heavy, heavy\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


# --- Atari ------------------------------------------------------------------------------


def test_every_game_has_a_rom():
    assert len(ATARI_GAMES) == 57
    ids = {rom_id(g) for g in ATARI_GAMES}
    assert len(ids) == 57
    assert rom_id("MsPacman") == "ms_pacman" and rom_id("UpNDown") == "up_n_down"


@pytest.mark.parametrize("name", ["MsPacman", "ms_pacman", "mspacman", "MS-PACMAN"])
def test_canonical_game_spellings(name):
    assert canonical_game(name) == "MsPacman"


def test_unknown_game_lists_valid_names():
    with pytest.raises(UnknownGameError, match=r"unknown Atari game 'Pacman'.*Alien.*Zaxxon"):
        make_atari_env("Pacman", 2)
    assert issubclass(UnknownGameError, ValueError)


def test_legal_actions_by_hand():
    names = [FULL_ACTION_NAMES[a] for a in legal_actions("Pong")]
    assert names == ["NOOP", "FIRE", "RIGHT", "LEFT", "RIGHTFIRE", "LEFTFIRE"]
    assert legal_actions("Breakout") == (0, 1, 3, 4)
    assert legal_actions("Freeway") == (0, 2, 5)  # NOOP UP DOWN
    assert legal_actions("Alien") == tuple(range(18))


@pytest.mark.parametrize("game", ["Pong", "MsPacman", "Seaquest", "Skiing"])
def test_action_maps_round_trip(game):
    m2f, f2m = minimal_to_full(game), full_to_minimal(game)
    assert f2m.shape == (18,) and m2f.dtype == np.int64
    np.testing.assert_array_equal(f2m[m2f], np.arange(len(m2f)))
    illegal = np.setdiff1d(np.arange(18), m2f)
    assert (f2m[illegal] == 0).all()  # illegal actions act as NOOP


def test_atari_env_protocol_and_seeding():
    env = make_atari_env("Breakout", 3, num_threads=1)
    try:
        assert env.spec.num_actions == 18 and env.spec.action_kind == "discrete"
        obs = env.reset([7, 8, 7])
        assert obs.shape == (3, *OBSERVATION_SHAPE) and obs.dtype == np.uint8
        assert (obs[:, :3] == 0).all() and obs[:, 3].max() > 0  # zero frames before the start
        np.testing.assert_array_equal(obs[0], obs[2])  # same seed, same start
        again = env.reset_at(1, 7)  # a lone reset with seed 7 starts like env 0 did
        np.testing.assert_array_equal(again, obs[0])
        assert env.reset_at(1, None).shape == OBSERVATION_SHAPE  # unseeded: any start
        actions = np.array([0, 3, 17])
        first = env.step(actions)
        assert first.observations.shape == (3, *OBSERVATION_SHAPE)
        assert first.rewards.dtype == np.float64 and first.success is None
        assert first.terminated.shape == first.truncated.shape == (3,)
        # The last frame moved into the stack (frame stack 4 of consecutive agent steps).
        np.testing.assert_array_equal(first.observations[:, 2], obs[:, 3])
        # Replaying the same seeds and actions gives the same frames (no sticky actions).
        env.reset([7, 8, 7])
        np.testing.assert_array_equal(env.step(actions).observations, first.observations)
    finally:
        env.close()


def test_atari_rewards_are_raw_scores():
    # Atlantis scores 100+ per hit: a clipped env would never give more than 1.
    env = make_atari_env("Atlantis", 2, num_threads=1)
    try:
        env.reset([0, 1])
        rng = np.random.default_rng(0)
        best = max(env.step(rng.integers(0, 18, 2)).rewards.max() for _ in range(300))
        assert best > 1
    finally:
        env.close()


# --- Meta-World -------------------------------------------------------------------------


def test_ml45_names_match_metaworld():
    from metaworld.env_dict import ML45_V3

    assert tuple(ML45_V3["train"]) == ML45_TRAIN_TASKS
    assert tuple(ML45_V3["test"]) == ML45_TEST_TASKS
    assert len(ML45_TRAIN_TASKS) == 45 and len(ML45_TEST_TASKS) == 5


def test_unknown_task_lists_valid_names():
    with pytest.raises(UnknownTaskError, match=r"unknown Meta-World task 'reach-v2'.*reach-v3"):
        check_task("reach-v2")
    with pytest.raises(UnknownTaskError):
        make_metaworld_env("fly-v3")
    with pytest.raises(UnknownTaskError):
        expert_policy("fly-v3")
    assert check_task("shelf-place-v3") == "shelf-place-v3"


def test_metaworld_vector_seeding_and_expert_success():
    env = make_metaworld_env("reach-v3", 3, seed=0)
    try:
        assert env.spec.observation_shape == (39,) and env.spec.act_dim == 4
        assert env.spec.max_episode_steps == 500
        obs = env.reset([11, 12, 11])
        assert obs.shape == (3, 39) and obs.dtype == np.float32
        np.testing.assert_array_equal(obs[0], obs[2])  # the goal depends on the seed alone
        assert not np.array_equal(obs[0, -3:], obs[1, -3:])  # another seed, another goal
        np.testing.assert_array_equal(env.reset_at(1, 11), obs[0])
        assert env.reset_at(1, None).shape == (39,)

        expert = expert_policy("reach-v3")
        obs = env.reset([1, 2, 3])
        success = np.zeros(3, dtype=bool)
        for t in range(500):
            step = env.step(np.stack([expert(o) for o in obs]))
            assert step.success is not None
            success |= step.success
            obs = step.observations
            assert step.truncated.all() == (t == 499)
        assert success.all()
        assert not step.terminated.any()
    finally:
        env.close()


def test_metaworld_expert_actions_are_bounded():
    env = make_metaworld_env("pick-place-v3", 1, seed=3)
    try:
        expert = expert_policy("pick-place-v3")
        action = expert(env.reset([0])[0])
        assert action.shape == (4,) and action.dtype == np.float32
        assert np.abs(action).max() <= 1.0
    finally:
        env.close()


def test_step_randomly_counts_every_env_step_and_resets_finished_envs() -> None:
    from dtmem.envs import step_randomly
    from dtmem.envs.metaworld import make_metaworld_env

    env = make_metaworld_env("reach-v3", num_envs=2, seed=0)
    resets: list[int] = []
    reset_at = env.reset_at

    def counting_reset_at(index: int, seed: int | None):
        resets.append(index)
        return reset_at(index, seed)

    env.reset_at = counting_reset_at  # type: ignore[method-assign]
    try:
        # the env truncates at 500 steps: 510 steps reset each env once on the way
        assert step_randomly(env, 510) == 1020
        assert sorted(resets) == [0, 1]
    finally:
        env.close()


def test_env_cache_builds_each_task_once_and_serves_fewer_envs_from_its_head():
    from dtmem.envs import EnvCache, env_id, env_spec

    cache = EnvCache(keep=1)
    try:
        env = cache.get("metaworld", "reach-v3", 3, seed=0)
        assert env.spec == env_spec("metaworld", "reach-v3")
        head = cache.get("metaworld", "reach-v3", 2, seed=0)
        assert cache.builds == 1 and head.num_envs == 2
        full = env.reset([5, 6, 7])
        np.testing.assert_array_equal(head.reset([5, 6]), full[:2])  # the same first envs
        assert cache.get("metaworld", "reach-v3", 3, seed=0) is env and cache.builds == 1
        cache.get("metaworld", "push-v3", 1, seed=0)  # keep=1: reach's envs are closed
        cache.get("metaworld", "reach-v3", 3, seed=0)
        assert cache.builds == 3
    finally:
        cache.close()
    assert env_id("metaworld", "reach-v3") == "Meta-World/reach-v3"
    assert env_id("atari", "Pong") == "ALE/Pong-v5"
