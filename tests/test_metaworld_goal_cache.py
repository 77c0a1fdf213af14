"""The Meta-World goal cache: a cached build is the env gym.make builds, goal for goal and
step for step; a corrupt, foreign or unwritable cache costs a resample, never an error."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("metaworld")

import gymnasium as gym
import metaworld

from dtmem.envs import goal_cache
from dtmem.envs.metaworld import _build_mt1, _seeded_reset

SEED = 5


@pytest.fixture(autouse=True)
def cache_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("DTMEM_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache" / "metaworld-goals"


def _no_sampling(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("metaworld.MT1 sampled the goals although they are cached")

    monkeypatch.setattr(metaworld, "MT1", refuse)


def _wrappers(env: gym.Env) -> list[type]:
    chain = [type(env)]
    while hasattr(env, "env"):
        env = env.env
        chain.append(type(env))
    return chain


def _trace(env: gym.Env, reset_seeds: list[int | None], steps: int) -> list[np.ndarray]:
    """Observations, rewards and success flags over resets (None: the env's own generator) and fixed random actions."""
    actions = np.random.default_rng(11).uniform(-1, 1, size=(steps, 4)).astype(np.float32)
    out = []
    for s in reset_seeds:
        out.append(_seeded_reset(env, s))
        for a in actions:
            obs, rew, term, trunc, info = env.step(a)
            out.append(np.concatenate([obs, [rew, term, trunc, info["success"]]]))
    return out


@pytest.mark.parametrize("task", ["reach-v3", "drawer-open-v3"])
def test_cached_build_is_the_gym_make_env(task, cache_dir, monkeypatch):
    reference = gym.make("Meta-World/MT1", env_name=task, seed=SEED, disable_env_checker=True)
    cold = _build_mt1(task, SEED)  # samples and writes the file
    assert goal_cache.goal_file(task, SEED).is_file()
    with monkeypatch.context() as m:
        _no_sampling(m)
        warm = _build_mt1(task, SEED)

    ref_data = [t.data for t in reference.get_wrapper_attr("tasks")]
    assert len(ref_data) == 50 and len(set(ref_data)) == 50
    assert [t.data for t in cold.get_wrapper_attr("tasks")] == ref_data
    assert [t.data for t in warm.get_wrapper_attr("tasks")] == ref_data
    assert _wrappers(warm) == _wrappers(cold) == _wrappers(reference)

    ref_trace = _trace(reference, [None, 0, 3, 1234], steps=6)
    for env in (cold, warm):
        trace = _trace(env, [None, 0, 3, 1234], steps=6)
        assert all(np.array_equal(a, b) for a, b in zip(trace, ref_trace, strict=True))
    # the goals differ between reset seeds, so equal traces are not equal by accident
    assert not np.array_equal(ref_trace[7], ref_trace[14])
    for env in (reference, cold, warm):
        env.close()


@pytest.fixture(scope="module")
def reach_tasks() -> tuple:
    return tuple(metaworld.MT1("reach-v3", seed=SEED).train_tasks)


def _edit(path: Path, **fields: object) -> None:
    payload = json.loads(path.read_text())
    payload.update(fields)
    path.write_text(json.dumps(payload))


CORRUPTIONS = {
    "truncated": lambda p: p.write_text(p.read_text()[:100]),
    "not an object": lambda p: p.write_text("[1, 2]"),
    "one goal edited": lambda p: _edit(
        p, goals=[[g + 1e-9 for g in row] for row in json.loads(p.read_text())["goals"]]
    ),
    "another task": lambda p: _edit(p, task="push-v3"),
    "another seed": lambda p: _edit(p, seed=SEED + 1),
    "another metaworld": lambda p: _edit(p, metaworld="0.0.1"),
    "goals as text": lambda p: _edit(p, goals=[["0.1"] * 6] * 50),
    "not finite": lambda p: _edit(p, goals=[[float("nan")] * 6] * 50),
    "49 goals": lambda p: _edit(p, goals=json.loads(p.read_text())["goals"][:49]),
    "ragged": lambda p: _edit(p, goals=[[0.1] * 6] * 49 + [[0.1] * 5]),
}


@pytest.mark.parametrize("kind", sorted(CORRUPTIONS))
def test_a_bad_file_is_ignored(kind, reach_tasks):
    path = goal_cache.save_goals("reach-v3", SEED, reach_tasks)
    assert path is not None
    loaded = goal_cache.load_goals("reach-v3", SEED)
    assert loaded is not None and [t.data for t in loaded] == [t.data for t in reach_tasks]
    CORRUPTIONS[kind](path)
    assert goal_cache.load_goals("reach-v3", SEED) is None


def test_a_corrupt_file_is_replaced_by_the_next_build(reach_tasks):
    path = goal_cache.goal_file("reach-v3", SEED)
    path.parent.mkdir(parents=True)
    path.write_bytes(b"\x80garbage")
    env = _build_mt1("reach-v3", SEED)
    assert [t.data for t in env.get_wrapper_attr("tasks")] == [t.data for t in reach_tasks]
    loaded = goal_cache.load_goals("reach-v3", SEED)
    assert loaded is not None and [t.data for t in loaded] == [t.data for t in reach_tasks]
    env.close()


def test_an_unwritable_cache_builds_as_before(tmp_path, monkeypatch, reach_tasks):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    monkeypatch.setenv("DTMEM_CACHE", str(blocker))
    assert goal_cache.save_goals("reach-v3", SEED, reach_tasks) is None
    env = _build_mt1("reach-v3", SEED)
    assert [t.data for t in env.get_wrapper_attr("tasks")] == [t.data for t in reach_tasks]
    assert blocker.read_text() == "not a directory"
    env.close()


def test_the_cache_follows_xdg_and_the_override(tmp_path, monkeypatch):
    monkeypatch.delenv("DTMEM_CACHE")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    path = goal_cache.goal_file("reach-v3", 2, "3.1.1")
    assert path == tmp_path / "xdg/dtmem/metaworld-goals/metaworld-3.1.1/reach-v3-seed2.json"
    monkeypatch.setenv("DTMEM_CACHE", str(tmp_path / "mine"))
    path = goal_cache.goal_file("reach-v3", 2, "3.1.1")
    assert path == tmp_path / "mine/metaworld-goals/metaworld-3.1.1/reach-v3-seed2.json"
