"""Atari behaviour policies from RLlib agents (PPO or DQN, new API stack).

``train_agent`` trains one agent per game and saves full algorithm checkpoints after the
configured iterations (``<checkpoint_dir>/<game>/iter_<NNNNNN>``, written under a temporary
name and renamed, so a killed training leaves no checkpoint that looks complete; a re-run
resumes from the latest one). ``CheckpointPolicy`` loads those checkpoints' RLModules and acts
in the collection envs: checkpoints from early and late in training give data of mixed
quality, as DQN Replay's 50 checkpoints per run do.

The agent sees exactly what the collection env gives (``dtmem.envs.atari``: the MDT protocol,
full 18-action set, 4 stacked 84x84 frames), rearranged for RLlib's default CNN
(channels last) and scaled as RLlib's Atari wrapper scales, x / 128 - 1 (``to_module_obs``).
Training rewards are clipped to their sign (as DQN and PPO do on Atari); collection records
raw rewards.

Nothing is unpickled when acting. RLlib's own checkpoint files are pickles (loading one runs
whatever code it names), so beside each checkpoint ``train_agent`` writes the acting module
as ``dtmem_policy/``: its weights in safetensors and the few facts needed to build it again
(``module.json``: algorithm, model config, inference-only), from which ``load_module`` builds
the module with dtmem's own code. A checkpoint without that export is refused with a line
naming ``dtmem convert-rllib``, which makes the export from a pickled checkpoint the user
trusts (``export_checkpoint``).
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import gymnasium as gym
import numpy as np

from dtmem.collect.policies import SlotPolicy, categorical_sample, epsilon_mix
from dtmem.envs import EnvSpec

if TYPE_CHECKING:
    from dtmem.config.collect import RLlibConfig

__all__ = [
    "AtariTrainEnv",
    "CheckpointError",
    "CheckpointPolicy",
    "IterationSummary",
    "build_algorithm_config",
    "checkpoint_path",
    "checkpoint_paths",
    "export_checkpoint",
    "load_module",
    "missing_checkpoints",
    "module_path",
    "policy_path",
    "to_module_obs",
    "train_agent",
]


class CheckpointError(ValueError):
    """A behaviour-policy checkpoint that is missing or unreadable."""


def to_module_obs(stacks: np.ndarray) -> np.ndarray:
    """(B, 4, 84, 84) uint8 frame stacks -> (B, 84, 84, 4) float32 in [-1, 1)."""
    hwc = np.moveaxis(stacks, -3, -1)  # (B, 84, 84, 4): RLlib's CNN takes channels last
    return hwc.astype(np.float32) / 128.0 - 1.0


# --- where checkpoints live --------------------------------------------------------------


def checkpoint_path(cfg: RLlibConfig, game: str, iteration: int) -> Path:
    """Absolute (RLlib's pyarrow file system refuses relative paths)."""
    return Path(cfg.checkpoint_dir).expanduser().resolve() / game / f"iter_{iteration:06d}"


def checkpoint_paths(cfg: RLlibConfig, game: str) -> list[Path]:
    """The game's checkpoints in ``checkpoint_iterations`` order (the policy's variants)."""
    return [checkpoint_path(cfg, game, it) for it in cfg.checkpoint_iterations]


def module_path(checkpoint: Path) -> Path:
    """The RLModule inside a full algorithm checkpoint (single-agent: ``default_policy``)."""
    return checkpoint / "learner_group" / "learner" / "rl_module" / "default_policy"


def policy_path(checkpoint: Path) -> Path:
    """The pickle-free export of the checkpoint's acting module (see the module docstring)."""
    return checkpoint / "dtmem_policy"


_WEIGHTS = "module.safetensors"
_SPEC = "module.json"


def missing_checkpoints(cfg: RLlibConfig, game: str) -> list[int]:
    """Iterations of ``checkpoint_iterations`` whose checkpoint (with its pickle-free export)
    does not exist."""
    return [
        it
        for it in cfg.checkpoint_iterations
        if not (policy_path(checkpoint_path(cfg, game, it)) / _WEIGHTS).is_file()
    ]


# --- training -----------------------------------------------------------------------------


class AtariTrainEnv(gym.Env[np.ndarray, int]):
    """One ``dtmem.envs.atari`` game as a gymnasium env for RLlib training.

    env_config: ``game``, ``max_episode_steps``. Observations (84, 84, 4) float32
    (``to_module_obs``), actions the 18 full-set actions, rewards clipped to their sign.
    """

    def __init__(self, config: dict[str, Any] | None = None) -> None:
        from dtmem.envs.atari import NUM_FULL_ACTIONS, make_atari_env

        config = dict(config or {})
        self._env = make_atari_env(str(config["game"]), 1, num_threads=1)
        self._max_steps = int(config.get("max_episode_steps", 27_000))
        self._t = 0
        self.observation_space = gym.spaces.Box(-1.0, 1.0, (84, 84, 4), np.float32)
        self.action_space = gym.spaces.Discrete(NUM_FULL_ACTIONS)

    def reset(
        self, *, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[np.ndarray, dict[str, Any]]:
        super().reset(seed=seed)
        self._t = 0
        episode_seed = int(self.np_random.integers(2**31 - 1))
        return to_module_obs(self._env.reset([episode_seed]))[0], {}

    def step(self, action: int) -> tuple[np.ndarray, float, bool, bool, dict[str, Any]]:
        step = self._env.step(np.asarray([action], dtype=np.int64))
        self._t += 1
        truncated = bool(step.truncated[0]) or self._t >= self._max_steps
        # On game over the native env has already reset (its observation is the next
        # episode's); a terminated transition's next observation is never bootstrapped from.
        return (
            to_module_obs(step.observations)[0],
            float(np.sign(step.rewards[0])),
            bool(step.terminated[0]),
            truncated,
            {},
        )

    def close(self) -> None:
        self._env.close()


def build_algorithm_config(cfg: RLlibConfig, game: str, seed: int) -> Any:
    """The RLlib ``AlgorithmConfig`` (PPO or DQN, torch, new API stack) for one game."""
    from ray.rllib.core.rl_module.default_model_config import DefaultModelConfig

    if cfg.algorithm == "PPO":
        from ray.rllib.algorithms.ppo import PPOConfig

        config: Any = PPOConfig().training(
            lr=cfg.lr,
            train_batch_size_per_learner=cfg.train_batch_size,
            minibatch_size=cfg.minibatch_size,
            num_epochs=cfg.num_epochs,
        )
    else:
        from ray.rllib.algorithms.dqn import DQNConfig

        config = DQNConfig().training(
            lr=cfg.lr,
            train_batch_size_per_learner=cfg.minibatch_size,
            replay_buffer_config={
                "type": "PrioritizedEpisodeReplayBuffer",
                "capacity": cfg.replay_capacity,
            },
        )
    model: dict[str, Any] = {}
    if cfg.conv_filters is not None:
        model["conv_filters"] = [list(layer) for layer in cfg.conv_filters]
    return (
        config.environment(
            AtariTrainEnv,
            env_config={"game": game, "max_episode_steps": cfg.max_episode_steps},
        )
        .framework("torch")
        .env_runners(
            num_env_runners=cfg.num_env_runners,
            num_envs_per_env_runner=cfg.envs_per_env_runner,
            rollout_fragment_length=cfg.rollout_fragment_length,
        )
        .learners(num_learners=0)
        .rl_module(model_config=DefaultModelConfig(**model))
        .debugging(seed=seed)
    )


@dataclass(frozen=True)
class IterationSummary:
    """One training iteration: mean return of the episodes finished in it (clipped
    rewards; NaN if none finished) and env steps sampled so far."""

    iteration: int
    episode_return_mean: float
    env_steps: int


def _summary(iteration: int, result: dict[str, Any]) -> IterationSummary:
    runners = result.get("env_runners", {}) or {}
    ret = runners.get("episode_return_mean", float("nan"))
    steps = runners.get("num_env_steps_sampled_lifetime", 0)
    return IterationSummary(iteration, float(ret), int(steps))


def _save_atomic(algo: Any, final: Path, algorithm: str) -> None:
    """Save under a hidden name beside ``final`` with the pickle-free export of the acting
    module, then rename (replacing an older one)."""
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = final.parent / f".tmp-{final.name}-{uuid.uuid4().hex[:8]}"

    def write(into: Path) -> None:
        algo.save_to_path(str(into))
        _write_policy(algo.get_module(), algorithm, policy_path(into))

    _replace_dir(tmp, final, write)


def _replace_dir(tmp: Path, final: Path, write: Callable[[Path], None]) -> None:
    """``write(tmp)``, then rename ``tmp`` over ``final`` (replacing an older one); on any
    failure ``tmp`` is removed."""
    try:
        write(tmp)
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def train_agent(
    cfg: RLlibConfig,
    game: str,
    *,
    seed: int,
    on_iteration: Callable[[IterationSummary], None] | None = None,
) -> list[Path]:
    """Train ``game``'s agent up to the last checkpoint iteration; returns the checkpoints.

    Already complete: nothing runs. Otherwise training resumes from the latest checkpoint
    that precedes the first missing one (or starts fresh) and saves every checkpoint
    iteration it passes. Needs Ray to be initialised (env runners are Ray actors).

    Resuming restores RLlib's own algorithm state, which is pickled (optimizer and replay
    state have no other form in RLlib): it reads only checkpoints that carry dtmem's export,
    i.e. that this function wrote; a checkpoint with RLlib's pickles alone is refused, never
    trained over. Keep ``checkpoint_dir`` a directory only you write to.
    """
    missing = missing_checkpoints(cfg, game)
    paths = checkpoint_paths(cfg, game)
    if not missing:
        return paths
    for it in missing:  # a pickle-only checkpoint is the user's: never trained over
        if module_path(checkpoint_path(cfg, game, it)).is_dir():
            load_module(checkpoint_path(cfg, game, it))  # raises: how to convert it
    before = [it for it in cfg.checkpoint_iterations if it < missing[0]]
    algo = build_algorithm_config(cfg, game, seed).build_algo()
    try:
        start = 0
        if before:
            start = before[-1]
            algo.restore_from_path(str(checkpoint_path(cfg, game, start)))
        for it in range(start + 1, cfg.checkpoint_iterations[-1] + 1):
            result = algo.train()
            if on_iteration is not None:
                on_iteration(_summary(it, result))
            if it in cfg.checkpoint_iterations:
                _save_atomic(algo, checkpoint_path(cfg, game, it), cfg.algorithm)
    finally:
        algo.stop()
    return paths


# --- acting from checkpoints ------------------------------------------------------------


def _model_config_json(module: Any) -> dict[str, Any]:
    """The module's model config, its JSON-able fields only (callables are never kept)."""
    raw = module.model_config
    if dataclasses.is_dataclass(raw) and not isinstance(raw, type):
        raw = dataclasses.asdict(raw)
    out = {}
    for key, value in dict(raw or {}).items():
        try:
            json.dumps(value)
        except TypeError:
            continue
        out[str(key)] = value
    return out


def _write_policy(module: Any, algorithm: str, dst: Path) -> None:
    """``module``'s weights (safetensors) and how to build it (JSON) into ``dst``."""
    from safetensors.torch import save_file

    dst.mkdir(parents=True, exist_ok=True)
    weights = {k: v.detach().cpu().contiguous() for k, v in module.state_dict().items()}
    save_file(weights, str(dst / _WEIGHTS))
    spec = {
        "format": 1,
        "algorithm": algorithm,
        "inference_only": bool(getattr(module, "inference_only", False)),
        "model_config": _model_config_json(module),
    }
    (dst / _SPEC).write_text(json.dumps(spec, indent=1))


def _read_spec(path: Path) -> tuple[str, bool, dict[str, Any]]:
    """``module.json`` checked field by field: (algorithm, inference_only, model config)."""
    try:
        spec = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CheckpointError(f"{path}: unreadable ({exc})") from None
    if not isinstance(spec, dict) or spec.get("format") != 1:
        raise CheckpointError(f"{path}: not a dtmem RLlib policy spec (format 1)")
    algorithm = spec.get("algorithm")
    if algorithm not in ("PPO", "DQN"):
        raise CheckpointError(f"{path}: algorithm: expected PPO or DQN, got {algorithm!r}")
    model = spec.get("model_config")
    if not isinstance(model, dict):
        raise CheckpointError(f"{path}: model_config: expected a mapping")
    return algorithm, bool(spec.get("inference_only", False)), model


def build_module(algorithm: str, model_config: dict[str, Any], inference_only: bool) -> Any:
    """A fresh torch RLModule of ``algorithm`` (PPO or DQN) for the Atari spaces.
    ``model_config`` may hold only the fields of RLlib's ``DefaultModelConfig`` and the
    algorithm's own model options (plain values: nothing names code to import)."""
    from ray.rllib.core import DEFAULT_MODULE_ID
    from ray.rllib.core.rl_module.default_model_config import DefaultModelConfig

    from dtmem.envs.atari import NUM_FULL_ACTIONS

    if algorithm == "PPO":
        from ray.rllib.algorithms.ppo import PPOConfig

        config: Any = PPOConfig()
    else:
        from ray.rllib.algorithms.dqn import DQNConfig

        config = DQNConfig()
    known = {f.name for f in dataclasses.fields(DefaultModelConfig)} | set(config.model_config)
    unknown = sorted(set(model_config) - known)
    if unknown:
        raise CheckpointError(f"{algorithm} model_config: unknown fields {unknown}")
    config = config.framework("torch").rl_module(model_config=dict(model_config))
    spaces: dict[str, Any] = {
        DEFAULT_MODULE_ID: (
            gym.spaces.Box(-1.0, 1.0, (84, 84, 4), np.float32),
            gym.spaces.Discrete(NUM_FULL_ACTIONS),
        )
    }
    return config.get_rl_module_spec(spaces=spaces, inference_only=inference_only).build()


def load_module(checkpoint: Path) -> Any:
    """The torch RLModule of a checkpoint, in inference mode, built by dtmem's code from the
    pickle-free export; a checkpoint that has only RLlib's pickles is refused."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    export = policy_path(checkpoint)
    if not (export / _WEIGHTS).is_file():
        if module_path(checkpoint).is_dir():
            raise CheckpointError(
                f"{checkpoint}: an RLlib checkpoint in pickle form is not loaded (unpickling "
                f"runs code); if you trust it, convert it: dtmem convert-rllib {checkpoint}"
            )
        raise CheckpointError(f"{checkpoint}: no RLlib policy at {export}")
    algorithm, inference_only, model_config = _read_spec(export / _SPEC)
    module: Any = build_module(algorithm, model_config, inference_only)
    try:
        weights = load_file(str(export / _WEIGHTS))
        module.load_state_dict(weights, strict=True)
    except (SafetensorError, RuntimeError, OSError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise CheckpointError(f"{export / _WEIGHTS}: does not fit the module: {first}") from None
    module.eval()
    return module


def export_checkpoint(checkpoint: Path) -> Path:
    """Write the pickle-free export of a full RLlib algorithm checkpoint (made by RLlib
    itself, or by an older dtmem) beside it, and return the export directory.

    This UNPICKLES the checkpoint, which runs any code it holds: call it only on a
    checkpoint you trust (you trained it, or you know who did). It is what
    ``dtmem convert-rllib`` runs; collection itself never calls it."""
    from ray.rllib.core.rl_module.rl_module import RLModule

    checkpoint = Path(checkpoint).expanduser().resolve()
    path = module_path(checkpoint)
    if not path.is_dir():
        raise CheckpointError(f"{checkpoint}: no RLModule at {path} (is it an RLlib checkpoint?)")
    module: Any = RLModule.from_checkpoint(path)  # trusted by the caller: see the docstring
    algorithm = "DQN" if hasattr(module, "compute_q_values") else "PPO"
    final = policy_path(checkpoint)
    tmp = checkpoint / f".tmp-dtmem_policy-{uuid.uuid4().hex[:8]}"
    _replace_dir(tmp, final, lambda into: _write_policy(module, algorithm, into))
    load_module(checkpoint)  # the export must load as collection will load it
    return final


def module_logits(module: Any, observations: np.ndarray) -> np.ndarray:
    """(B, 4, 84, 84) uint8 -> (B, 18) action scores: PPO's action logits, or DQN's Q-values
    (so a 'sampled' DQN action is a Boltzmann draw over Q)."""
    import torch

    obs = torch.from_numpy(to_module_obs(observations))
    with torch.no_grad():
        if hasattr(module, "compute_q_values"):
            out = module.compute_q_values({"obs": obs})["qf_preds"]
        else:
            out = module.forward_inference({"obs": obs})["action_dist_inputs"]
    return np.asarray(out.cpu().numpy(), dtype=np.float32)


class CheckpointPolicy(SlotPolicy):
    """RLlib checkpoints acting in an Atari vector env; episode ``plan.variant`` picks the
    checkpoint. ``greedy``: argmax of the scores (epsilon-greedy with ``epsilon``); else a
    sample from softmax(scores). Modules load on first use.

    Note on reproducibility: rows of a batch are computed together, and CPU kernels may
    round differently at different batch sizes; a near-tie between two actions can then
    flip, so RLlib-policy datasets are reproducible for a fixed ``envs_per_actor``.
    """

    def __init__(
        self,
        checkpoints: Sequence[Path],
        spec: EnvSpec,
        num_envs: int,
        *,
        greedy: bool,
        epsilon: float = 0.0,
    ) -> None:
        if spec.action_kind != "discrete":
            raise ValueError(f"{spec.name}: RLlib checkpoint policies act in Atari only")
        super().__init__(spec, num_envs)
        for c in checkpoints:
            if not (policy_path(Path(c)) / _WEIGHTS).is_file():
                load_module(Path(c))  # raises the right error: pickle-only, or missing
        self.checkpoints = [Path(c) for c in checkpoints]
        self.greedy = greedy
        self.epsilon = epsilon
        self._modules: dict[int, Any] = {}

    def _module(self, variant: int) -> Any:
        if variant not in self._modules:
            self._modules[variant] = load_module(self.checkpoints[variant])
        return self._modules[variant]

    def act(self, observations: np.ndarray, active: np.ndarray) -> np.ndarray:
        rows = np.flatnonzero(active)
        draws = self._draws(rows)
        chosen = np.zeros(len(rows), dtype=np.int64)
        variants = self._variants[rows]
        for v in np.unique(variants).tolist():
            sel = variants == v  # (B,) the active rows played by checkpoint v
            logits = module_logits(self._module(v), observations[rows[sel]])
            if self.greedy:
                chosen[sel] = logits.argmax(axis=-1)
            else:
                chosen[sel] = categorical_sample(logits, draws.samples[sel])
        chosen = epsilon_mix(chosen, draws.random_actions, draws.uniforms, self.epsilon)
        return self._full(rows, chosen, len(active))
