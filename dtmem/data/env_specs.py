"""The gymnasium ``EnvSpec`` a dataset records, so that Minari's ``recover_environment()``
rebuilds the env the data came from.

Minari stores ``env_spec.to_json()``; a spec whose entry point is a Python callable does not
serialise, and Meta-World registers ``Meta-World/MT1`` with a lambda. The specs here name
importable entry points instead, and build the env a dataset's observations match:

    Meta-World/<task>   metaworld.make_mt_envs(task, seed): one task, 39-dim states, 4 actions
    ALE/<Game>-v5       ale_py's AtariEnv (full 18-action set, frameskip 1) wrapped in
                        gymnasium's AtariPreprocessing (noop starts, frame skip 4, 84x84
                        grayscale): single (84, 84) uint8 frames, as the datasets store them
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from gymnasium.envs.registration import EnvSpec

__all__ = ["atari_env_spec", "metaworld_env_spec", "recording_env_spec"]


def metaworld_env_spec(task: str, seed: int = 0) -> EnvSpec:
    """One Meta-World task as ``gym.make("Meta-World/MT1", env_name=task, seed=seed)`` builds it."""
    from gymnasium.envs.registration import EnvSpec

    return EnvSpec(
        id="Meta-World/MT1",
        entry_point="metaworld:make_mt_envs",
        kwargs={"name": task, "seed": seed},
        disable_env_checker=True,
    )


def atari_env_spec(game: str, repeat_action_probability: float = 0.0) -> EnvSpec:
    """``game`` ("Breakout") as MDT's protocol plays it, one (84, 84) uint8 frame a step.

    ``repeat_action_probability`` 0 is MDT's (no sticky actions); the DQN Replay data was
    recorded with 0.25.
    """
    from gymnasium.envs.registration import EnvSpec, WrapperSpec

    from dtmem.envs.atari import canonical_game, rom_id

    name = canonical_game(game)
    return EnvSpec(
        id=f"ALE/{name}-v5",
        entry_point="ale_py.env:AtariEnv",
        kwargs={
            "game": rom_id(name),
            "repeat_action_probability": repeat_action_probability,
            "full_action_space": True,
            "frameskip": 1,  # AtariPreprocessing skips (and max-pools) frames
            "max_num_frames_per_episode": 108_000,
        },
        additional_wrappers=(
            WrapperSpec(
                name="AtariPreprocessing",
                entry_point="gymnasium.wrappers:AtariPreprocessing",
                kwargs={
                    "noop_max": 30,
                    "frame_skip": 4,
                    "screen_size": 84,
                    "terminal_on_life_loss": False,
                    "grayscale_obs": True,
                },
            ),
        ),
    )


def recording_env_spec(env_id: str) -> EnvSpec | None:
    """The spec for one of dtmem's recording ids (``Meta-World/<task>``, ``ALE/<Game>-v5``);
    None for any other id (the dataset then records none)."""
    if env_id.startswith("Meta-World/"):
        return metaworld_env_spec(env_id.removeprefix("Meta-World/"))
    if env_id.startswith("ALE/") and env_id.endswith("-v5"):
        return atari_env_spec(env_id.removeprefix("ALE/").removesuffix("-v5"))
    return None
