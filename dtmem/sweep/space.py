"""Search spaces: which config fields a sweep varies and how, parsed and checked before any
trial starts.

A space maps a dotted config path to one distribution::

    model.memory.slots: {grid: [64, 128, 256, 512, 1024, 2048]}   # every value, in order
    lora.rank:          {choice: [2, 4, 8]}                         # one drawn per trial
    lora.dropout:       {uniform: [0.0, 0.2]}                       # low <= x < high
    optim.lr:           {loguniform: [1.0e-4, 3.0e-3]}              # log-uniform, low > 0
    model.n_layer:      {randint: [1, 4]}                           # integer, low <= x < high

Checks, each a one-line ``SpaceError``: the path names a field of the stage's config (walked
through the pydantic schema: ``data.datasets.0.weight`` indexes a list); the path is not one
the sweep sets itself; the distribution is well formed (known kind, non-empty, numbers,
low < high); and every value a trial could get fits the base config: each grid/choice value,
the ends and a few draws of each range are applied to the base config, one path at a time,
and validated with pydantic, then every grid combination together (up to
``MAX_COMBINATIONS``) so that joint rules (``n_head`` divides ``d_model``) are checked too.

Ray is imported only by ``tune_param_space``.
"""

from __future__ import annotations

import itertools
import math
import types
import typing
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
from pydantic import BaseModel, ValidationError

__all__ = [
    "KINDS",
    "MAX_COMBINATIONS",
    "Axis",
    "SpaceError",
    "apply_values",
    "check_paths",
    "check_values",
    "grid_size",
    "parse_space",
    "set_path",
    "short_names",
    "trial_label",
    "tune_param_space",
]

Kind = Literal["grid", "choice", "uniform", "loguniform", "randint"]
KINDS: tuple[str, ...] = ("grid", "choice", "uniform", "loguniform", "randint")
MAX_COMBINATIONS = 512  # grid combinations validated jointly (each value is always checked)
_DRAWS = 8  # random draws of each range validated, besides its ends


class SpaceError(ValueError):
    """A search space that cannot be swept; the message is one line naming the path."""


@dataclass(frozen=True)
class Axis:
    """One swept path: ``values`` are the grid/choice values, or (low, high) of a range."""

    path: str
    kind: Kind
    values: tuple[Any, ...]

    @property
    def is_grid(self) -> bool:
        return self.kind == "grid"

    def describe(self) -> str:
        return f"{self.path}: {{{self.kind}: {list(self.values)}}}"

    def probe_values(self, rng: np.random.Generator) -> list[Any]:
        """Values a trial could get, to validate: every listed value; a range's ends and a
        few draws (randint: low and high - 1, its largest value)."""
        if self.kind in ("grid", "choice"):
            return list(self.values)
        low, high = self.values
        if self.kind == "randint":
            draws = rng.integers(low, high, size=_DRAWS).tolist()
            return [int(low), int(high) - 1, *draws]
        if self.kind == "uniform":
            draws = rng.uniform(low, high, size=_DRAWS).tolist()
        else:
            draws = np.exp(rng.uniform(math.log(low), math.log(high), size=_DRAWS)).tolist()
        return [float(low), float(high), *draws]

    def upper_bound(self) -> Any:
        """The largest value a trial can get (numbers only)."""
        if self.kind in ("grid", "choice"):
            return max(self.values)
        return self.values[1] - 1 if self.kind == "randint" else self.values[1]

    def tune_domain(self) -> Any:
        """The Ray Tune search domain."""
        from ray import tune

        if self.kind == "grid":
            return tune.grid_search(list(self.values))
        if self.kind == "choice":
            return tune.choice(list(self.values))
        low, high = self.values
        if self.kind == "uniform":
            return tune.uniform(low, high)
        if self.kind == "loguniform":
            return tune.loguniform(low, high)
        return tune.randint(low, high)


# --------------------------------------------------------------------------- parsing


def _is_number(x: Any) -> bool:
    return isinstance(x, int | float) and not isinstance(x, bool) and math.isfinite(x)


def _parse_axis(path: str, spec: Any, where: str) -> Axis:
    forms = ", ".join(f"{{{k}: ...}}" for k in KINDS)
    if not isinstance(spec, Mapping) or len(spec) != 1:
        raise SpaceError(f"{where}: {path}: expected one of {forms}, got {spec!r}")
    ((kind, args),) = spec.items()
    if kind not in KINDS:
        raise SpaceError(f"{where}: {path}: unknown kind {kind!r}; use one of {', '.join(KINDS)}")
    if kind in ("grid", "choice"):
        if not isinstance(args, list | tuple):
            raise SpaceError(f"{where}: {path}: {kind} needs a list of values, got {args!r}")
        if not args:
            raise SpaceError(f"{where}: {path}: {kind} is empty")
        return Axis(path, kind, tuple(args))
    if not isinstance(args, list | tuple) or len(args) != 2 or not all(map(_is_number, args)):
        raise SpaceError(f"{where}: {path}: {kind} needs [low, high] (two numbers), got {args!r}")
    low, high = args
    if not low < high:
        raise SpaceError(f"{where}: {path}: {kind} [{low}, {high}] is empty (needs low < high)")
    if kind == "loguniform" and low <= 0:
        raise SpaceError(f"{where}: {path}: loguniform needs low > 0, got {low}")
    if kind == "randint" and not (float(low).is_integer() and float(high).is_integer()):
        raise SpaceError(f"{where}: {path}: randint needs integer bounds, got [{low}, {high}]")
    if kind == "randint":
        low, high = int(low), int(high)
    return Axis(path, kind, (low, high))


def parse_space(space: Mapping[str, Any], where: str = "space") -> list[Axis]:
    """The axes of ``space`` (path -> {kind: args}), in the file's order."""
    if not space:
        raise SpaceError(f"{where}: empty; sweep at least one field")
    axes = []
    for path, spec in space.items():
        if not isinstance(path, str) or not path or any(not p for p in path.split(".")):
            raise SpaceError(f"{where}: {path!r}: not a dotted config path")
        axes.append(_parse_axis(path, spec, where))
    return axes


def grid_size(axes: Sequence[Axis]) -> int:
    """Grid combinations (1 without grid axes)."""
    return math.prod(len(a.values) for a in axes if a.is_grid)


# --------------------------------------------------------------------------- paths


def _model_classes(annotation: Any) -> tuple[list[type[BaseModel]], bool]:
    """The pydantic models an annotation can hold, and whether it is a sequence of them."""
    origin = typing.get_origin(annotation)
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return [annotation], False
    if origin in (typing.Union, types.UnionType):
        found: list[type[BaseModel]] = []
        seq = False
        for arg in typing.get_args(annotation):
            models, is_seq = _model_classes(arg)
            found += models
            seq = seq or is_seq
        return found, seq
    if origin in (tuple, list):
        args = [a for a in typing.get_args(annotation) if a is not Ellipsis]
        models = [m for a in args for m in _model_classes(a)[0]]
        return models, bool(models)
    return [], False


def check_paths(
    axes: Sequence[Axis], config_cls: type[BaseModel], reserved: Mapping[str, str], where: str
) -> None:
    """Every path names a field of ``config_cls`` and none is ``reserved`` (prefix -> why)."""
    for axis in axes:
        for prefix, why in reserved.items():
            if axis.path == prefix or axis.path.startswith(prefix + "."):
                raise SpaceError(f"{where}: {axis.path}: cannot be swept ({why})")
        _check_path(axis.path, config_cls, where)


def _check_path(path: str, config_cls: type[BaseModel], where: str) -> None:
    parts = path.split(".")
    models: list[type[BaseModel]] = [config_cls]
    seq = False
    for i, part in enumerate(parts):
        here = ".".join(parts[:i]) or config_cls.__name__
        if seq:  # the previous field is a list of sections: this part indexes it
            if not part.isdigit():
                raise SpaceError(f"{where}: {path}: {here} is a list; index it (e.g. {here}.0)")
            seq = False
            continue
        if not models:
            raise SpaceError(f"{where}: {path}: {here} is a value, not a section")
        field = next((m.model_fields[part] for m in models if part in m.model_fields), None)
        if field is None:
            names = sorted({n for m in models for n in m.model_fields})
            raise SpaceError(
                f"{where}: {path}: unknown field {part!r} in {here} (fields: {', '.join(names)})"
            )
        models, seq = _model_classes(field.annotation)
    if seq:
        raise SpaceError(f"{where}: {path}: a list of sections; sweep one item's field")


# --------------------------------------------------------------------------- values


def set_path(data: Mapping[str, Any], path: str, value: Any) -> dict[str, Any]:
    """A copy of the nested ``data`` with ``path`` set to ``value`` (missing sections are
    created; a digit indexes a list)."""
    out: dict[str, Any] = _copy(data)
    node: Any = out
    parts = path.split(".")
    for i, part in enumerate(parts[:-1]):
        key: Any = int(part) if isinstance(node, list) else part
        if isinstance(node, list):
            if key >= len(node):
                raise SpaceError(f"{path}: index {key} is past the {len(node)} items of the list")
            child = node[key]
        else:
            child = node.get(key)
            if child is None:
                child = {}
                node[key] = child
        if not isinstance(child, dict | list):
            raise SpaceError(f"{path}: {'.'.join(parts[: i + 1])} is not a section")
        node = child
    last = parts[-1]
    if isinstance(node, list):
        if int(last) >= len(node):
            raise SpaceError(f"{path}: index {last} is past the {len(node)} items of the list")
        node[int(last)] = value
    else:
        node[last] = value
    return out


def _copy(x: Any) -> Any:
    if isinstance(x, Mapping):
        return {k: _copy(v) for k, v in x.items()}
    if isinstance(x, list | tuple):
        return [_copy(v) for v in x]
    return x


def apply_values(data: Mapping[str, Any], values: Mapping[str, Any]) -> dict[str, Any]:
    """``data`` with every ``path -> value`` of ``values`` set."""
    out = _copy(data)
    for path, value in values.items():
        out = set_path(out, path, value)
    return out


def _first_error(err: ValidationError) -> str:
    e = err.errors()[0]
    loc = ".".join(str(p) for p in e["loc"])
    msg = "unknown field" if e["type"] == "extra_forbidden" else e["msg"]
    return f"{loc}: {msg}" if loc else msg


def check_values(
    axes: Sequence[Axis],
    base: Mapping[str, Any],
    validate: Callable[[dict[str, Any]], Any],
    where: str,
    seed: int = 0,
) -> None:
    """Every value a trial could get, applied to ``base`` and passed to ``validate`` (a
    pydantic ``model_validate``): one path at a time, then every grid combination."""
    rng = np.random.default_rng(seed)
    probes = {a.path: a.probe_values(rng) for a in axes}
    for axis in axes:
        for value in probes[axis.path]:
            try:
                validate(apply_values(base, {axis.path: value}))
            except ValidationError as err:
                raise SpaceError(
                    f"{where}: {axis.path}={value!r} does not fit the config: {_first_error(err)}"
                ) from None
    grid = [a for a in axes if a.is_grid]
    if len(grid) < 2 or grid_size(axes) > MAX_COMBINATIONS:
        return
    others = {a.path: probes[a.path][0] for a in axes if not a.is_grid}
    for combo in itertools.product(*(a.values for a in grid)):
        values = {**dict(zip((a.path for a in grid), combo, strict=True)), **others}
        try:
            validate(apply_values(base, values))
        except ValidationError as err:
            shown = ", ".join(f"{k}={v!r}" for k, v in values.items())
            raise SpaceError(
                f"{where}: the combination {shown} does not fit the config: {_first_error(err)}"
            ) from None


def tune_param_space(axes: Sequence[Axis]) -> dict[str, Any]:
    """Tune's ``param_space``: flat, one key per dotted path."""
    return {a.path: a.tune_domain() for a in axes}


# --------------------------------------------------------------------------- trial names

# Sections whose name says nothing about a value (``model.memory.slots`` -> ``slots``);
# others stay, so ``lora.rank`` is not confused with another rank.
_PLAIN_SECTIONS = ("model.", "memory.", "optim.", "data.")


def short_names(paths: Sequence[str]) -> dict[str, str]:
    """Each swept path's name in trial labels: the path without leading plain sections
    (``model.``, ``memory.``, ``optim.``, ``data.``), or the whole path where two would
    collide."""
    names = {}
    for path in paths:
        name = path
        while name.startswith(_PLAIN_SECTIONS) and "." in name:
            name = name.split(".", 1)[1]
        names[path] = name
    taken = list(names.values())
    return {p: n if taken.count(n) == 1 else p for p, n in names.items()}


def trial_label(values: Mapping[str, Any], names: Mapping[str, str]) -> str:
    """A trial named by what it varies: ``slots=64,seed=1``, ``lora.rank=8,lora.alpha=2``."""
    return ",".join(f"{names.get(p, p)}={_label_value(v)}" for p, v in values.items())


def _label_value(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)
