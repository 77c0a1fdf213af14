"""``dtmem submit``: run a pipeline command on a Ray cluster through Ray's Jobs API.

The repository is shipped as the job's working directory (``cluster/runtime_env.yaml`` says
what is left out), so the cluster runs exactly the code of this checkout; the cluster's image
brings the libraries, so nothing is installed at run time. The command's logs are followed
until the job ends, and the exit status is the job's: 0 for SUCCEEDED, 1 for FAILED or
STOPPED. Ctrl-C stops following, never the job.

Nothing is lost on the way: for a ``dtmem`` stage the tracking URI, the dataset root and the
checkpoint storage are resolved here, as the user's settings say (``resolve_stores``), and
forwarded to the job ($MLFLOW_TRACKING_URI, $MINARI_DATASETS_PATH, ``--set`` for a config's
relative paths). Without that the run would go to an ``mlflow.db`` and checkpoints inside
Ray's temporary copy of the working directory. A store a remote cluster cannot reach (a
sqlite file, a loopback server, a local directory) is refused before the job starts; for a
cluster on this machine (address on 127.0.0.1/localhost) absolute local paths are forwarded.

Token authentication (Ray >= 2.52) stays on: the token is found where Ray 2.60 looks for it
and sent as ``Authorization: Bearer <token>`` on every request, the log stream included.

    RAY_AUTH_MODE   "token": a token must be found; "disabled": none is sent;
                    unset: one is sent if found (what ``ray start`` does since 2.59)
    RAY_AUTH_TOKEN  the token itself (highest precedence)
    RAY_AUTH_TOKEN_PATH  a file holding it (unreadable or empty: an error, as in Ray)
    ~/.ray/auth_token    the default file (``ray get-auth-token --generate`` writes it)

Ray is imported inside the functions that use it, so ``dtmem --help`` stays fast.
"""

from __future__ import annotations

import asyncio
import logging
import os
import re
import shlex
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

import yaml

from dtmem.interrupts import JOB_STOP_WAIT_S

if TYPE_CHECKING:
    from ray.job_submission import JobSubmissionClient

__all__ = [
    "DEFAULT_ADDRESS",
    "DEFAULT_RUNTIME_ENV",
    "SubmitError",
    "exit_code",
    "load_runtime_env",
    "resolve_address",
    "resolve_auth_token",
    "submit",
]

DEFAULT_ADDRESS = "http://127.0.0.1:8265"
DEFAULT_RUNTIME_ENV = Path("cluster/runtime_env.yaml")
# Ray overrides a client's explicit address with these; ``--address`` must win here.
_ADDRESS_ENV_VARS = ("RAY_API_SERVER_ADDRESS", "RAY_ADDRESS")
_ENV_REF = re.compile(r"^\$\{([A-Za-z_][A-Za-z0-9_]*)\}$")
_TERMINAL = {"SUCCEEDED": 0, "FAILED": 1, "STOPPED": 1}


class SubmitError(ValueError):
    """A job that cannot be submitted or followed; the message is one line."""


# --------------------------------------------------------------------------- inputs


def resolve_address(address: str | None, environ: Mapping[str, str]) -> str:
    """``--address``, else $RAY_ADDRESS, else the local dashboard ``http://127.0.0.1:8265``."""
    return address or environ.get("RAY_ADDRESS") or DEFAULT_ADDRESS


def resolve_auth_token(environ: Mapping[str, str], home: Path) -> str | None:
    """The token to send, found as Ray 2.60 finds it, or None when none is to be sent.

    Precedence: $RAY_AUTH_TOKEN, then the file named by $RAY_AUTH_TOKEN_PATH (which must be
    readable and non-empty), then ``home/.ray/auth_token``. Whitespace is stripped, as Ray does.
    $RAY_AUTH_MODE=disabled sends nothing; =token makes a missing token an error; unset sends
    a token if one is found.
    """
    mode = environ.get("RAY_AUTH_MODE", "").strip().lower()
    if mode not in ("", "token", "disabled"):
        raise SubmitError(f"RAY_AUTH_MODE={mode!r}: expected 'token' or 'disabled'")
    if mode == "disabled":
        return None
    token = environ.get("RAY_AUTH_TOKEN", "").strip()
    if not token and environ.get("RAY_AUTH_TOKEN_PATH"):
        path = Path(environ["RAY_AUTH_TOKEN_PATH"]).expanduser()
        try:
            token = path.read_text().strip()
        except OSError as exc:
            raise SubmitError(f"RAY_AUTH_TOKEN_PATH={path}: cannot read it ({exc})") from None
        if not token:
            raise SubmitError(f"RAY_AUTH_TOKEN_PATH={path}: the file is empty")
    elif not token:
        default = home / ".ray" / "auth_token"
        token = default.read_text().strip() if default.is_file() else ""
    if not token and mode == "token":
        raise SubmitError(
            "RAY_AUTH_MODE=token but no token found: set RAY_AUTH_TOKEN or "
            "RAY_AUTH_TOKEN_PATH, or run `ray get-auth-token --generate`"
        )
    return token or None


def load_runtime_env(
    path: Path, cwd: Path, environ: Mapping[str, str], *, git_commit: str | None = None
) -> dict[str, Any]:
    """Reads a Ray runtime env YAML and makes it ready to send.

    * ``working_dir`` (relative paths are taken from ``cwd``) must be an existing directory;
      it is made absolute.
    * An ``env_vars`` value written ``"${NAME}"`` passes the submitter's $NAME through; it is
      dropped when $NAME is unset here, so the cluster's own value (if any) applies.
    * ``git_commit``, when given, is added as $DTMEM_GIT_COMMIT: the shipped directory has no
      ``.git``, so the job learns its commit from the submitter.
    * $RAY_JOB_STOP_WAIT_TIME_S defaults to ``JOB_STOP_WAIT_S``: ``ray job stop`` sends
      SIGTERM, then SIGKILL after this many seconds (Ray's default, 3, kills a stage before
      its runs end KILLED); Ray's job supervisor runs with the job's env vars.
    """
    if not path.is_file():
        raise SubmitError(f"{path}: runtime env file not found (run from the repository root)")
    try:
        env = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise SubmitError(f"{path}: not valid YAML ({str(exc).splitlines()[0]})") from None
    if not isinstance(env, dict):
        raise SubmitError(f"{path}: expected a mapping of runtime env fields")
    if "working_dir" in env:
        if not isinstance(env["working_dir"], str):
            raise SubmitError(f"{path}: working_dir: expected a path")
        working_dir = (cwd / env["working_dir"]).resolve()
        if not working_dir.is_dir():
            raise SubmitError(f"{path}: working_dir: {working_dir} is not a directory")
        env["working_dir"] = str(working_dir)
    raw_vars = env.get("env_vars") or {}
    if not isinstance(raw_vars, dict):
        raise SubmitError(f"{path}: env_vars: expected a mapping NAME: value")
    env_vars: dict[str, str] = {}
    for name, value in raw_vars.items():
        ref = _ENV_REF.match(str(value))
        if ref is None:
            env_vars[str(name)] = str(value)
        elif ref.group(1) in environ:
            env_vars[str(name)] = environ[ref.group(1)]
    if git_commit:
        env_vars.setdefault("DTMEM_GIT_COMMIT", git_commit)
    env_vars.setdefault("RAY_JOB_STOP_WAIT_TIME_S", str(JOB_STOP_WAIT_S))
    if env_vars:
        env["env_vars"] = env_vars
    else:
        env.pop("env_vars", None)
    return env


def exit_code(status: str) -> int | None:
    """The CLI's exit status for a job status: 0 SUCCEEDED, 1 FAILED/STOPPED, None if running."""
    return _TERMINAL.get(status)


def _git_commit(cwd: Path) -> str | None:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=cwd, capture_output=True, text=True, timeout=5
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    commit = out.stdout.strip()
    return commit if out.returncode == 0 and commit else None


# --------------------------------------------------------------------------- Ray


@contextmanager
def _address_env_cleared() -> Iterator[None]:
    """Hides $RAY_ADDRESS/$RAY_API_SERVER_ADDRESS while the client is made: Ray would let them
    override the address we resolved (``--address`` first)."""
    saved = {k: os.environ.pop(k) for k in _ADDRESS_ENV_VARS if k in os.environ}
    try:
        yield
    finally:
        os.environ.update(saved)


def _connect(address: str, token: str | None) -> JobSubmissionClient:
    from ray.exceptions import AuthenticationError, RayError
    from ray.job_submission import JobSubmissionClient

    # Ray's client narrates each packaging step at INFO; our own lines say what matters.
    logging.getLogger("ray").setLevel(logging.WARNING)

    headers = {"Authorization": f"Bearer {token}"} if token else None
    try:
        with _address_env_cleared():
            return JobSubmissionClient(address, headers=headers)
    except AuthenticationError as exc:
        first = str(exc).splitlines()[0]
        hint = "a token was sent but refused" if token else "no token was found to send"
        raise SubmitError(f"{address}: {first} ({hint}; see RAY_AUTH_TOKEN)") from None
    except (ConnectionError, RuntimeError, ValueError, RayError) as exc:
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise SubmitError(f"cannot reach the Ray Jobs API at {address}: {first}") from None


def _follow(client: JobSubmissionClient, job_id: str, out: IO[str]) -> None:
    """Prints the job's logs as they come, until the job ends (Ray closes the stream)."""

    async def tail() -> None:
        async for chunk in client.tail_job_logs(job_id):
            out.write(chunk)
            out.flush()

    asyncio.run(tail())


def _final_status(
    client: JobSubmissionClient, job_id: str, timeout_s: float = 60.0, poll_s: float = 0.5
) -> str:
    """The job's terminal status; the log stream can close a moment before it is recorded."""
    deadline = time.monotonic() + timeout_s
    while True:
        status = str(client.get_job_status(job_id).value)
        if exit_code(status) is not None or time.monotonic() > deadline:
            return status
        time.sleep(poll_s)


def submit(
    command: Sequence[str],
    *,
    address: str | None = None,
    runtime_env: Path = DEFAULT_RUNTIME_ENV,
    wait: bool = True,
    cwd: Path | None = None,
    environ: Mapping[str, str] | None = None,
    out: IO[str] | None = None,
    say: Callable[[str], None] | None = None,
) -> int:
    """Submits ``command`` as a Ray job and returns the CLI's exit status.

    ``out`` receives the job's logs (stdout), ``say`` our own messages (stderr). With
    ``wait=False`` the job id is printed and 0 returned at once.
    """
    from dtmem.errors import redact_text
    from dtmem.job_stores import read_mounts, resolve_stores

    cwd = cwd or Path.cwd()
    environ = os.environ if environ is None else environ
    out = out or sys.stdout
    say = say or (lambda msg: print(msg, file=sys.stderr, flush=True))
    if not command:
        raise SubmitError("nothing to run: give the command after --, e.g. -- dtmem pretrain X")

    url = resolve_address(address, environ)
    token = resolve_auth_token(environ, Path.home())
    env = load_runtime_env(runtime_env, cwd, environ, git_commit=_git_commit(cwd))
    working_dir = Path(env.get("working_dir") or cwd)
    stores = resolve_stores(
        command, address=url, cwd=cwd, working_dir=working_dir, environ=environ,
        mounts=read_mounts(),
    )  # fmt: skip
    if stores.env:
        env["env_vars"] = {**env.get("env_vars", {}), **stores.env}
    for override in stores.overrides:
        command = [*command, "--set", override]
    entrypoint = shlex.join(command)

    client = _connect(url, token)
    try:
        job_id = client.submit_job(
            entrypoint=entrypoint,
            runtime_env=env,
            metadata={"submitted_by": "dtmem submit"},
        )
    except (RuntimeError, ValueError, ConnectionError) as exc:
        raise SubmitError(f"{url}: the job was refused: {str(exc).splitlines()[0]}") from None
    stop_hint = f"ray job stop --address {url} {job_id}"
    say(f"submitted {job_id} to {url}: {redact_text(entrypoint)}")
    if stores.summary:
        say(stores.summary)
    if not wait:
        say(f"follow: ray job logs --follow --address {url} {job_id}    stop: {stop_hint}")
        return 0

    try:
        _follow(client, job_id, out)
    except KeyboardInterrupt:
        say(f"stopped following; {job_id} keeps running. Stop it with: {stop_hint}")
        return 130
    except RuntimeError as exc:  # the log stream broke; the job may still be running
        say(f"log stream closed early ({str(exc).splitlines()[0]}); waiting for the status")
    try:
        status = _final_status(client, job_id)
    except KeyboardInterrupt:
        say(f"stopped waiting; {job_id} keeps running. Stop it with: {stop_hint}")
        return 130
    code = exit_code(status)
    say(f"{job_id} {status}")
    return 1 if code is None else code
