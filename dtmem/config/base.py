"""Config plumbing shared by every pipeline: a frozen, strict pydantic base, YAML loading
and dotted command-line overrides.

Every config is a tree of ``FrozenConfig`` models: unknown fields are refused, every field
carries a description, and a validated config is never mutated (``model_copy(update=...)``
makes a new one). ``load_config`` reads one YAML file, applies ``--set a.b.c=value``
overrides, and validates; any error is raised as ``ConfigError`` with a one-line message
that names the offending field's dotted path.

Names that become paths (run, experiment, sweep and dataset names) are checked once, here, by
their type: ``SafeName`` (one path segment) and ``SafeId`` (segments joined by '/'), so no
name such as ``../../x`` reaches a directory.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated, Any, TypeVar

import yaml
from pydantic import AfterValidator, BaseModel, ConfigDict, ValidationError

__all__ = [
    "ConfigError",
    "FrozenConfig",
    "SafeId",
    "SafeName",
    "apply_overrides",
    "flatten",
    "format_validation_error",
    "load_config",
    "parse_override",
]


class ConfigError(ValueError):
    """A config that cannot be used; the message is one line naming the field."""


class FrozenConfig(BaseModel):
    """Base for all configs: immutable, unknown keys refused, docs required."""

    model_config = ConfigDict(frozen=True, extra="forbid", validate_default=True)


C = TypeVar("C", bound=FrozenConfig)

# One path segment: starts with a letter, digit or '_', then letters, digits and ._-=+,@{}
# or inner spaces; never '..', never a separator. '{}' lets a template such as '{task}' pass.
_SEGMENT = re.compile(r"[A-Za-z0-9_{][A-Za-z0-9_.,=+@{}\- ]{0,127}")


def check_name(value: str) -> str:
    """``value`` if it is one safe path segment, else ValueError saying what is allowed."""
    if not _SEGMENT.fullmatch(value) or ".." in value or value != value.strip():
        raise ValueError(
            f"{value!r} is not a safe name: use letters, digits and . _ - = + , @ "
            "(at most 128, starting with a letter, digit or _; no '..', '/' or '\\')"
        )
    return value


def check_id(value: str) -> str:
    """``value`` if it is safe segments joined by '/' (a Minari id: namespace/name-v0)."""
    if not value or value.startswith("/") or value.endswith("/"):
        raise ValueError(f"{value!r} is not a safe id: segments joined by '/', none empty")
    for part in value.split("/"):
        try:
            check_name(part)
        except ValueError:
            raise ValueError(
                f"{value!r} is not a safe id: segment {part!r} is not a safe name (letters, "
                "digits and . _ - = + , @; no '..')"
            ) from None
    return value


SafeName = Annotated[str, AfterValidator(check_name)]
"""A name that becomes one path segment (run, experiment, sweep, dataset name)."""

SafeId = Annotated[str, AfterValidator(check_id)]
"""Safe names joined by '/' (a Minari dataset id or namespace)."""


def format_validation_error(err: ValidationError, source: str = "config") -> str:
    """One line per problem, ``source: a.b.c: message``, joined with '; '."""
    parts = []
    for e in err.errors():
        path = ".".join(str(p) for p in e["loc"]) or "<root>"
        msg = e["msg"]
        if e["type"] == "extra_forbidden":
            msg = "unknown field"
        elif e["type"] == "value_error":
            msg = msg.removeprefix("Value error, ")
        parts.append(f"{path}: {msg}")
    return f"{source}: " + "; ".join(parts)


def parse_override(text: str) -> tuple[list[str], Any]:
    """``"train.lr=3e-4"`` -> (["train", "lr"], 0.0003). The value is parsed as YAML."""
    if "=" not in text:
        raise ConfigError(f"override {text!r}: expected dotted.key=value")
    key, raw = text.split("=", 1)
    path = [p for p in key.strip().split(".")]
    if not key.strip() or any(not p for p in path):
        raise ConfigError(f"override {text!r}: empty key")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError as exc:
        raise ConfigError(f"override {text!r}: value is not valid YAML ({exc})") from exc
    return path, value


def apply_overrides(data: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """A new nested dict with each ``dotted.key=value`` applied (the input is not changed).

    A list item is reached by its index (``data.datasets.0.env=...``); an index must name an
    existing item (``-1`` counts from the end, as in Python)."""
    out = _deepcopy(data)
    for text in overrides:
        path, value = parse_override(text)
        node: dict[str, Any] | list[Any] = out
        for i, part in enumerate(path):
            where = ".".join(path[: i + 1])
            last = i == len(path) - 1
            if isinstance(node, list):
                index = _list_index(node, part, text, where)
                if last:
                    node[index] = value
                    break
                child = node[index]
            else:
                if last:
                    node[part] = value
                    break
                child = node.get(part)
                if child is None:
                    child = {}
                    node[part] = child
            if not isinstance(child, dict | list):
                raise ConfigError(f"override {text!r}: {where} is not a section or a list")
            node = child
    return out


def _list_index(items: list[Any], part: str, text: str, where: str) -> int:
    """``part`` as an index into ``items``, or a one-line ConfigError."""
    try:
        index = int(part)
    except ValueError:
        raise ConfigError(f"override {text!r}: {where}: a list is indexed by a number") from None
    if not -len(items) <= index < len(items):
        raise ConfigError(
            f"override {text!r}: {where}: index {index} out of range "
            f"(the list has {len(items)} item{'s' if len(items) != 1 else ''})"
        )
    return index


def _deepcopy(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _deepcopy(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_deepcopy(v) for v in value]
    return value


def load_config(cls: type[C], path: str | Path | None, overrides: list[str] | None = None) -> C:
    """Read ``path`` (YAML; None means all defaults), apply overrides, validate as ``cls``."""
    data: dict[str, Any] = {}
    source = "config"
    if path is not None:
        p = Path(path)
        source = str(p)
        if not p.is_file():
            raise ConfigError(f"{p}: no such config file")
        try:
            loaded = yaml.safe_load(p.read_text(encoding="utf-8"))
        except UnicodeDecodeError as exc:
            raise ConfigError(
                f"{p}: not UTF-8 text (byte {exc.start}: {exc.reason}); save it as UTF-8"
            ) from None
        except OSError as exc:
            raise ConfigError(f"{p}: cannot read it ({exc.strerror or exc})") from None
        except yaml.YAMLError as exc:
            first = str(exc).splitlines()[0] if str(exc) else "invalid YAML"
            raise ConfigError(f"{p}: invalid YAML: {first}") from exc
        if loaded is None:
            loaded = {}
        if not isinstance(loaded, dict):
            raise ConfigError(f"{p}: top level must be a mapping, got {type(loaded).__name__}")
        data = loaded
    data = apply_overrides(data, overrides or [])
    try:
        return cls.model_validate(data)
    except ValidationError as err:
        raise ConfigError(format_validation_error(err, source)) from None


def flatten(cfg: BaseModel | dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"a.b": 1, ...}``: a config as flat dotted keys (for MLflow params)."""
    data = cfg.model_dump(mode="json") if isinstance(cfg, BaseModel) else cfg
    out: dict[str, Any] = {}
    for key, value in data.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict) and value:
            out.update(flatten(value, prefix=f"{name}."))
        else:
            out[name] = value
    return out
