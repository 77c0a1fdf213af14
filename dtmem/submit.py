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
import urllib.parse
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

import yaml

if TYPE_CHECKING:
    from ray.job_submission import JobSubmissionClient

__all__ = [
    "DEFAULT_ADDRESS",
    "DEFAULT_RUNTIME_ENV",
    "JobStores",
    "SubmitError",
    "exit_code",
    "is_local_address",
    "load_runtime_env",
    "resolve_address",
    "resolve_auth_token",
    "resolve_stores",
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


# --------------------------------------------------------------------------- stores

# What a stage writes outside MLflow, and where it reads datasets (dotted config fields).
_STAGES: dict[str, tuple[str, tuple[str, ...], str | None]] = {
    "collect": ("dtmem.config.collect:CollectConfig", ("policy.rllib.checkpoint_dir",), "root"),
    "pretrain": ("dtmem.config.train:PretrainConfig", ("checkpoint.dir",), "data.root"),
    "finetune": ("dtmem.config.train:FinetuneConfig", ("checkpoint.dir",), "data.root"),
    "evaluate": ("dtmem.config.evaluate:EvaluateConfig", (), None),
    "sweep": ("dtmem.config.sweep:SweepConfig", ("storage_dir",), None),
}
_LOOPBACK = ("localhost", "::1")
# File systems every node can mount at the same path (shared storage).
_SHARED_FS = ("nfs", "nfs4", "cifs", "smb3", "smbfs", "ceph", "glusterfs", "lustre", "beegfs",
              "gpfs", "9p", "virtiofs", "fuse.")  # fmt: skip
_SHARED_HINT = "shared storage mounted at the same path on every node"


@dataclass(frozen=True)
class JobStores:
    """Where a submitted stage's results go, resolved on the submitter's side.

    ``env``: forwarded in the job's environment ($MLFLOW_TRACKING_URI, $MINARI_DATASETS_PATH);
    ``overrides``: ``--set`` arguments added to the command (a config's relative path made
    absolute); ``summary``: one line for the user (credentials redacted)."""

    env: dict[str, str]
    overrides: tuple[str, ...]
    summary: str


def is_local_address(address: str) -> bool:
    """Whether the Ray cluster at ``address`` runs on this machine (loopback host)."""
    host = urllib.parse.urlsplit(address if "://" in address else f"http://{address}").hostname
    return host is not None and (host in _LOOPBACK or host.startswith("127."))


def _on_shared_fs(path: Path, mounts: str | None) -> bool:
    """Whether ``path`` (or its nearest existing parent) lies on a network/shared mount."""
    if mounts is None:
        return False
    best, fstype = "", ""
    target = str(path)
    for line in mounts.splitlines():
        fields = line.split()
        if len(fields) < 3:
            continue
        point = fields[1].replace("\\040", " ")
        inside = target == point or target.startswith(point.rstrip("/") + "/")
        if inside and len(point) > len(best):
            best, fstype = point, fields[2]
    return fstype.startswith(_SHARED_FS)


def _read_mounts() -> str | None:
    try:
        return Path("/proc/mounts").read_text()
    except OSError:
        return None


def _stage_command(command: Sequence[str]) -> tuple[str, str, list[str]] | None:
    """``dtmem STAGE CONFIG [--set k=v ...]`` -> (stage, config, overrides); else None."""
    if len(command) < 3 or Path(command[0]).name != "dtmem" or command[1] not in _STAGES:
        return None
    if command[2].startswith("-"):
        return None
    overrides: list[str] = []
    args = list(command[3:])
    for i, arg in enumerate(args):
        if arg in ("--set", "-s") and i + 1 < len(args):
            overrides.append(args[i + 1])
        elif arg.startswith("--set="):
            overrides.append(arg[len("--set=") :])
    return command[1], command[2], overrides


def _field(cfg: Any, dotted: str) -> Any:
    node = cfg
    for part in dotted.split("."):
        node = getattr(node, part, None)
        if node is None:
            return None
    return node


def _place(
    what: str, value: str, *, cwd: Path, local: bool, address: str, mounts: str | None
) -> str:
    """``value`` (a directory the job writes or reads) as the job must see it: absolute, and
    reachable from the cluster's nodes; refused (SubmitError) when a remote cluster cannot
    reach it."""
    if "://" in value:  # object storage (s3://, gs://, ...): the same from every node
        return value
    path = Path(value).expanduser()
    if not path.is_absolute():
        if not local:
            raise SubmitError(
                f"{what}: {value!r} is relative: on the cluster at {address} it would land in "
                f"Ray's temporary copy of the working directory; use {_SHARED_HINT}"
            )
        path = cwd / path
    path = Path(os.path.normpath(path))
    if not local and path.exists() and not _on_shared_fs(path, mounts):
        raise SubmitError(
            f"{what}: {path} is a directory on this machine, which the cluster at {address} "
            f"cannot reach; use {_SHARED_HINT}"
        )
    return str(path)


def _local_store(uri: str) -> bool:
    """A tracking store only this machine can reach: a sqlite file, or a loopback server."""
    if uri.startswith("sqlite:"):
        return True
    return uri.startswith(("http://", "https://")) and is_local_address(uri)


def resolve_stores(
    command: Sequence[str],
    *,
    address: str,
    cwd: Path,
    working_dir: Path,
    environ: Mapping[str, str],
    mounts: str | None = None,
) -> JobStores:
    """Resolve the tracking URI, the dataset root and the checkpoint storage of a ``dtmem``
    stage command on the submitter's side, as the user's settings say (config, else
    environment, else the defaults, relative paths from ``cwd``), and check a cluster can
    reach them: on this machine (a loopback address) absolute local paths are forwarded; a
    remote cluster gets them only when they are servers, object storage or shared mounts.

    The config is read and validated here, so a bad one is refused before the job starts.
    Any other command gets only $MLFLOW_TRACKING_URI and $MINARI_DATASETS_PATH, made absolute.
    """
    from dtmem.tracking import DEFAULT_TRACKING_URI, check_tracking, redact_uri

    local = is_local_address(address)
    parsed = _stage_command(command)
    cfg: Any = None
    storage_fields: tuple[str, ...] = ()
    root_field = None
    if parsed is not None:
        import importlib

        from dtmem.config.base import load_config

        stage, config, sets = parsed
        cls_path, storage_fields, root_field = _STAGES[stage]
        module, _, name = cls_path.partition(":")
        config_path = Path(config) if Path(config).is_absolute() else working_dir / config
        cfg = load_config(getattr(importlib.import_module(module), name), config_path, sets)

    env: dict[str, str] = {}
    overrides: list[str] = []

    # the tracking store: tracking.uri, else $MLFLOW_TRACKING_URI, else ./mlflow.db
    cfg_uri = _field(cfg, "tracking.uri")
    uri = cfg_uri or environ.get("MLFLOW_TRACKING_URI") or None
    if parsed is not None or uri:
        uri = uri or DEFAULT_TRACKING_URI
        if uri.startswith("sqlite:///") and not uri.startswith("sqlite:////"):
            uri = "sqlite:///" + os.path.normpath(cwd / uri[len("sqlite:///") :])
        if parsed is not None and _local_store(uri) and not local:
            raise SubmitError(
                f"tracking store {redact_uri(uri)} is on this machine; the cluster at {address} "
                "cannot reach it: set MLFLOW_TRACKING_URI (or tracking.uri) to a tracking "
                "server every node reaches, e.g. http://mlflow.internal:5000"
            )
        if parsed is not None and (local or uri.startswith("sqlite:")):
            try:
                check_tracking(uri)
            except ValueError as exc:
                raise SubmitError(str(exc)) from None
        env["MLFLOW_TRACKING_URI"] = uri
        if cfg_uri and cfg_uri != uri:
            overrides.append(f"tracking.uri={uri}")

    # the dataset root: the config's, else $MINARI_DATASETS_PATH, else ~/.minari/datasets
    # a command that is not a stage is only given absolute paths, never refused
    place = lambda what, value: _place(  # noqa: E731
        what, value, cwd=cwd, local=local or parsed is None, address=address, mounts=mounts
    )
    cfg_root = _field(cfg, root_field) if root_field else None
    root = cfg_root or environ.get("MINARI_DATASETS_PATH") or None
    if root is not None:
        what = root_field if cfg_root else "MINARI_DATASETS_PATH"
        root = place(what, root)
        if cfg_root and cfg_root != root:
            overrides.append(f"{root_field}={root}")
    elif parsed is not None and local:
        root = str(Path.home() / ".minari" / "datasets")
    if root is not None:
        env["MINARI_DATASETS_PATH"] = root

    # checkpoints and other run directories
    storage = []
    for dotted in storage_fields:
        value = _field(cfg, dotted)
        if value is None:
            continue
        placed = place(dotted, str(value))
        storage.append(placed)
        if placed != value:
            overrides.append(f"{dotted}={placed}")

    parts = []
    if "MLFLOW_TRACKING_URI" in env:
        parts.append(f"MLflow {redact_uri(env['MLFLOW_TRACKING_URI'])}")
    if root is not None:
        parts.append(f"datasets {root}")
    parts.extend(f"checkpoints {s}" for s in storage)
    summary = "results: " + "; ".join(parts) if parts else ""
    return JobStores(env=env, overrides=tuple(overrides), summary=summary)


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
        mounts=_read_mounts(),
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
