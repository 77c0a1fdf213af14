"""The CLI's contract for errors: a user's mistake (a bad file or field, an unreachable
service, a full disk, an unknown model reference) is one line ``error: ...`` naming the file
or field, exit code 2, and nothing half-written left behind; a crash of dtmem itself is one
line naming the file that holds the traceback, exit code 1; ``DTMEM_DEBUG=1`` lets the
traceback through. Credentials never reach the terminal."""

from __future__ import annotations

import errno
import os
import socket
from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner

from dtmem.cli import app, guarded

REPO = Path(__file__).resolve().parents[1]
SMOKE = REPO / "pipelines" / "configs" / "smoke"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _errors(output: str) -> list[str]:
    return [ln for ln in output.splitlines() if ln.startswith("error:")]


@pytest.fixture
def cwd(tmp_path, monkeypatch) -> Path:
    """An empty working directory (the default MLflow store and checkpoints go here)."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv("DTMEM_DEBUG", raising=False)
    monkeypatch.setenv("MINARI_DATASETS_PATH", str(tmp_path / "datasets"))
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "state"))
    return tmp_path


def _left_behind(root: Path) -> list[str]:
    """What a refused command left in ``root`` (an empty datasets root does not count)."""
    return sorted(
        str(p.relative_to(root))
        for p in root.rglob("*")
        if p.is_file() and "state" not in p.relative_to(root).parts
    )


# --------------------------------------------------------------------------- bad files and fields


def test_a_config_that_is_not_utf8_names_the_file(cwd: Path) -> None:
    bad = cwd / "latin1.yaml"
    bad.write_bytes("run_name: caf\xe9\n".encode("latin-1"))
    result = CliRunner().invoke(app, ["pretrain", str(bad)])
    assert result.exit_code == 2
    assert _errors(result.output) == [
        f"error: {bad}: not UTF-8 text (byte 13: invalid continuation byte); save it as UTF-8"
    ]
    assert _left_behind(cwd) == ["latin1.yaml"]


@pytest.mark.parametrize(
    ("override", "expected"),
    [
        ("run_name=../../x", "run_name: '../../x' is not a safe name"),
        ("tracking.experiment=/etc", "tracking.experiment: '/etc' is not a safe name"),
        ("data.datasets.7.env=x", "data.datasets.7: index 7 out of range (the list has 3 items)"),
        ("data.datasets.0.id=a/../../b", "data.datasets.0.id: 'a/../../b' is not a safe id"),
        ("registry.name=team/dtmem", "registry: name 'team/dtmem': MLflow refuses a model name"),
        ("registry.alias=best.v1", "registry: alias 'best.v1': use letters, digits"),
    ],
)
def test_hostile_names_and_overrides_are_one_line_before_anything_is_written(
    cwd: Path, override: str, expected: str
) -> None:
    result = CliRunner().invoke(app, ["pretrain", str(SMOKE / "pretrain.yaml"), "--set", override])
    assert result.exit_code == 2
    (line,) = _errors(result.output)
    assert expected in line
    assert _left_behind(cwd) == []  # no store, no run directory, no checkpoint
    assert not (cwd.parent / "x").exists()


def test_an_unreachable_tracking_server_is_one_line_without_its_credentials(cwd: Path) -> None:
    uri = f"http://alice:hunter2@127.0.0.1:{_free_port()}"
    result = CliRunner().invoke(
        app, ["evaluate", str(SMOKE / "evaluate.yaml"), "--set", f"tracking.uri={uri}"]
    )
    assert result.exit_code == 2
    lines = result.output.strip().splitlines()
    assert (
        lines[0].startswith("dtmem evaluate") and "results to MLflow http://127.0.0.1:" in lines[0]
    )
    (line,) = _errors(result.output)
    assert "is unreachable" in line and "Connection refused" in line
    assert "hunter2" not in result.output and "alice" not in result.output
    assert _left_behind(cwd) == []


def test_a_model_reference_that_leaves_its_run_is_one_line(cwd: Path) -> None:
    ref = "runs:/0123456789abcdef0123456789abcdef/../.."
    result = CliRunner().invoke(
        app, ["evaluate", str(SMOKE / "evaluate.yaml"), "--set", f"checkpoint={ref}"]
    )
    assert result.exit_code == 2
    assert _errors(result.output) == [
        f"error: {ref!r}: artifact path '../..' leaves the run's artifacts"
    ]
    assert "Traceback" not in result.output


def test_a_hostile_rllib_checkpoint_is_refused_by_collect_and_runs_nothing(cwd: Path) -> None:
    from tests.test_security import _hostile_rllib_checkpoint

    marker = cwd / "MARKER"
    _hostile_rllib_checkpoint(cwd / "agents" / "Pong" / "iter_000001", marker)
    config = cwd / "atari.yaml"
    config.write_text(
        "suite: atari\ntasks: [Pong]\nepisodes_per_task: 2\nmax_steps: 20\n"
        "policy: {kind: rllib, rllib: {algorithm: PPO, checkpoint_dir: agents, "
        "checkpoint_iterations: [1], train_missing: false}}\n"
        "num_actors: 1\nenvs_per_actor: 1\ndataset: {namespace: dtmem/evil}\n"
    )
    before = _left_behind(cwd)
    result = CliRunner().invoke(app, ["collect", str(config)])
    assert result.exit_code == 2
    (line,) = _errors(result.output)
    assert (
        "pickle" in line
        and f"dtmem convert-rllib {cwd / 'agents' / 'Pong' / 'iter_000001'}" in line
    )
    assert not marker.exists()
    assert _left_behind(cwd) == before  # no dataset, no MLflow store


# --------------------------------------------------------------------------- the guard


def _guard(fn, capsys) -> tuple[int, list[str]]:
    with pytest.raises(typer.Exit) as exit_:
        guarded(fn)
    err = capsys.readouterr().err
    return exit_.value.exit_code, err.strip().splitlines()


def _raise(exc: BaseException):
    def go() -> None:
        raise exc

    return go


def test_user_errors_from_every_layer_are_one_line_exit_2(cwd: Path, capsys) -> None:
    from mlflow.exceptions import MlflowException
    from pydantic import ValidationError
    from ray.exceptions import RayTaskError

    from dtmem.config.tracking import TrackingConfig
    from dtmem.fileio import DiskError
    from dtmem.ray_session import RayStartError

    try:
        TrackingConfig(run_name="../x")
    except ValidationError as exc:
        validation = exc
    disk = DiskError(
        errno.ENOSPC, "/data/x: cannot write (the disk is full; free space or write elsewhere)"
    )
    in_worker = RayTaskError("collect", "Traceback ...", disk).as_instanceof_cause()
    cases = [
        (
            RayStartError("could not start Ray (127.0.0.1:1): no cluster there"),
            "could not start Ray",
        ),
        (disk, "/data/x: cannot write (the disk is full"),
        (in_worker, "/data/x: cannot write (the disk is full"),  # raised inside a Ray task
        (MlflowException("Run 'abc' not found"), "Run 'abc' not found"),
        (
            FileNotFoundError(errno.ENOENT, "No such file or directory", "/m/x.pt"),
            "/m/x.pt: No such file",
        ),
        (ConnectionRefusedError(111, "Connection refused"), "Connection refused"),
        (validation, "run_name: '../x' is not a safe name"),
        (ValueError("https://u:hunter2@h/x?token=t2: nope"), "https://h/x: nope"),
    ]
    for exc, expected in cases:
        code, lines = _guard(_raise(exc), capsys)
        assert code == 2, exc
        assert len(lines) == 1 and lines[0].startswith("error: ") and expected in lines[0], lines
        assert "hunter2" not in lines[0] and "t2" not in lines[0]
    assert not (cwd / "state").exists()  # no crash report for a user's error


def test_a_full_disk_in_a_real_write_is_one_line_and_leaves_nothing(
    cwd: Path, capsys, monkeypatch
) -> None:
    from dtmem.fileio import write_json_atomic

    def full(fd: int) -> None:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(os, "fsync", full)
    code, lines = _guard(lambda: write_json_atomic(cwd / "out" / "summary.json", {"a": 1}), capsys)
    assert code == 2
    assert lines == [
        f"error: {cwd / 'out' / 'summary.json'}: cannot write (the disk is full; free space or write elsewhere)"
    ]
    assert list((cwd / "out").iterdir()) == []


def test_a_crash_is_one_line_naming_its_traceback_file(cwd: Path, capsys) -> None:
    def bug() -> None:
        {}["missing"]

    code, lines = _guard(bug, capsys)
    assert code == 1 and len(lines) == 1
    assert lines[0].startswith("error: dtmem crashed (KeyError: 'missing'); full traceback in ")
    report = Path(lines[0].rsplit(" ", 1)[-1])
    assert report.parent == cwd / "state" / "dtmem" / "crashes"
    text = report.read_text()
    assert "Traceback (most recent call last)" in text and 'in bug\n    {}["missing"]' in text
    assert oct(report.stat().st_mode & 0o777) == "0o600"


def test_dtmem_debug_lets_tracebacks_through(cwd: Path, monkeypatch) -> None:
    monkeypatch.setenv("DTMEM_DEBUG", "1")
    with pytest.raises(KeyError):
        guarded(_raise(KeyError("x")))
    with pytest.raises(ValueError, match="bad"):
        guarded(_raise(ValueError("bad")))


def test_ctrl_c_is_exit_130(capsys) -> None:
    code, lines = _guard(_raise(KeyboardInterrupt()), capsys)
    assert code == 130 and lines == ["interrupted"]
