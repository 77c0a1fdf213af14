"""``dtmem ui``: the MLflow UI on the project's tracking store.

The store is the one every stage logs to (``--backend-store-uri``, else $MLFLOW_TRACKING_URI,
else ``sqlite:///mlflow.db`` in the working directory). The server binds to 127.0.0.1 unless
told otherwise and starts lean: one worker and MLflow's job runner off
(MLFLOW_SERVER_ENABLE_JOB_EXECUTION=false), about 12 s to answer instead of 30.

The server runs in its own process group, so stopping ``dtmem ui`` (Ctrl-C or SIGTERM to its
pid) stops the server and its uvicorn worker together.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from types import FrameType

from dtmem.tracking import redact_uri, resolve_tracking_uri

__all__ = ["UIError", "run_ui", "server_command", "wait_until_up"]

LEAN_ENV = {"MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}


class UIError(ValueError):
    """The UI cannot be started; the message is one line."""


def server_command(backend_store_uri: str, host: str, port: int) -> list[str]:
    """The ``mlflow server`` command line for this interpreter's MLflow."""
    return [
        sys.executable,
        "-m",
        "mlflow",
        "server",
        "--backend-store-uri",
        backend_store_uri,
        "--host",
        host,
        "--port",
        str(port),
        "--workers",
        "1",
    ]


def _local_host(host: str) -> str:
    """Where to reach a server bound to ``host`` from this machine."""
    return "127.0.0.1" if host in ("0.0.0.0", "::", "") else host


def _check_port_free(host: str, port: int) -> None:
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as s:
        try:
            s.bind((host, port))
        except OSError as exc:
            raise UIError(f"{host}:{port} is not free ({exc.strerror}); pick --port") from None


def wait_until_up(url: str, proc: subprocess.Popen[bytes], timeout_s: float) -> None:
    """Polls ``url/health`` until it answers 200; raises UIError if the server exits first."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise UIError(f"mlflow server exited with code {proc.returncode} (see above)")
        try:
            with urllib.request.urlopen(f"{url}/health", timeout=2) as r:
                if r.status == 200:
                    return
        except (urllib.error.URLError, OSError):
            pass
        time.sleep(0.3)
    raise UIError(f"mlflow server did not answer at {url} within {timeout_s:.0f} s")


def _stop(proc: subprocess.Popen[bytes], grace_s: float = 10.0) -> None:
    """SIGTERM to the server's process group, SIGKILL after ``grace_s``."""
    if proc.poll() is not None:
        return
    for sig, wait_s in ((signal.SIGTERM, grace_s), (signal.SIGKILL, 5.0)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(timeout=wait_s)
            return
        except subprocess.TimeoutExpired:
            continue


def run_ui(
    backend_store_uri: str | None = None,
    host: str = "127.0.0.1",
    port: int = 5000,
    *,
    start_timeout_s: float = 90.0,
    say: Callable[[str], None] | None = None,
) -> int:
    """Starts the MLflow UI, prints its URL, and serves until interrupted; returns the exit
    status (0 after Ctrl-C or SIGTERM)."""
    say = say or (lambda msg: print(msg, flush=True))
    uri = resolve_tracking_uri(backend_store_uri)
    if uri.startswith("sqlite:///"):
        db_dir = os.path.dirname(uri[len("sqlite:///") :]) or "."
        if not os.path.isdir(db_dir):
            raise UIError(f"{redact_uri(uri)}: directory {db_dir} does not exist")
    _check_port_free(host, port)
    url = f"http://{_local_host(host)}:{port}"

    def on_term(signum: int, frame: FrameType | None) -> None:
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, on_term)
    proc = subprocess.Popen(
        server_command(uri, host, port),
        env={**os.environ, **LEAN_ENV},
        start_new_session=True,  # its own group: stopped as one with its uvicorn worker
    )
    try:
        wait_until_up(url, proc, start_timeout_s)
        say(f"MLflow UI: {url}   (store: {redact_uri(uri)}; Ctrl-C to stop)")
        return proc.wait()
    except KeyboardInterrupt:
        return 0
    finally:
        _stop(proc)
        signal.signal(signal.SIGTERM, previous)
