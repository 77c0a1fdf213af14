"""A real two-node Ray cluster on this machine, for tests that submit jobs to it.

``ray start --head`` and ``ray start --address`` each run as a ``--block`` subprocess in its own
session, with its own short temp dir and its own free ports, so several test sessions (and the
session-wide ``ray_session``) can run side by side. Token authentication is ON, as on a real
cluster: ``LocalCluster.client_env()`` is the environment a client needs to reach it.

Teardown stops exactly the processes started here, by pid: the ``ray start`` processes, every
descendant they have, and any process whose command line names one of our temp dirs (Ray's
daemons are found that way even once re-parented). Never ``ray stop``: it kills every Ray on
the machine.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path

import psutil

__all__ = ["LocalCluster", "free_port", "local_two_node_cluster", "stop_processes"]

RAY = Path(sys.executable).with_name("ray")


def free_port() -> int:
    """A TCP port free on 127.0.0.1 right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass(frozen=True)
class LocalCluster:
    """A running two-node cluster: where to reach it and how to authenticate."""

    dashboard_url: str  # http://127.0.0.1:<port>, the Jobs API
    gcs_address: str  # 127.0.0.1:<port>, for ray.init(address=...)
    token: str
    temp_dirs: tuple[Path, Path]  # head, worker

    def client_env(self, **extra: str) -> dict[str, str]:
        """os.environ plus what a client of this cluster needs (token auth on)."""
        env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "RAY_AUTH_MODE")}
        env.update(RAY_AUTH_MODE="token", RAY_AUTH_TOKEN=self.token)
        env.update(extra)
        return env


def _node_env(token: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
    env.update(
        RAY_AUTH_MODE="token",
        RAY_AUTH_TOKEN=token,
        RAY_USAGE_STATS_ENABLED="0",
        RAY_DEDUP_LOGS="0",
        # Job drivers and workers find `dtmem` and this interpreter's libraries.
        PATH=f"{RAY.parent}{os.pathsep}{os.environ.get('PATH', '')}",
    )
    return env


def _start_node(args: list[str], env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    with log.open("wb") as out:
        return subprocess.Popen(
            [str(RAY), "start", "--block", "--disable-usage-stats", *args],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )


def _ours(temp_dirs: tuple[Path, ...], roots: list[psutil.Process]) -> list[psutil.Process]:
    """Processes started by us: the roots, their descendants, and any naming our temp dirs."""
    found: dict[int, psutil.Process] = {}
    for root in roots:
        try:
            for p in [root, *root.children(recursive=True)]:
                found[p.pid] = p
        except psutil.NoSuchProcess:
            continue
    marks = tuple(str(d) for d in temp_dirs)
    for p in psutil.process_iter(["cmdline"]):
        cmdline = " ".join(p.info.get("cmdline") or [])
        if any(m in cmdline for m in marks):
            found.setdefault(p.pid, p)
    found.pop(os.getpid(), None)
    return list(found.values())


def stop_processes(procs: list[psutil.Process], grace_s: float = 10.0) -> None:
    """SIGTERM each, wait up to ``grace_s``, then SIGKILL the ones left."""
    for p in procs:
        try:
            p.send_signal(signal.SIGTERM)
        except psutil.NoSuchProcess:
            continue
    _, alive = psutil.wait_procs(procs, timeout=grace_s)
    for p in alive:
        try:
            p.kill()
        except psutil.NoSuchProcess:
            continue
    psutil.wait_procs(alive, timeout=5)


def _wait_for(what: str, ready: object, timeout_s: float, logs: list[Path]) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if callable(ready) and ready():
            return
        time.sleep(0.5)
    tails = "\n".join(f"--- {p}\n{p.read_text(errors='replace')[-2000:]}" for p in logs)
    raise TimeoutError(f"{what} not ready after {timeout_s:.0f} s\n{tails}")


def _alive_nodes(dashboard_url: str, token: str) -> int:
    """Alive nodes as the dashboard reports them (0 while it is not answering)."""
    req = urllib.request.Request(
        f"{dashboard_url}/nodes?view=summary", headers={"Authorization": f"Bearer {token}"}
    )
    try:
        with urllib.request.urlopen(req, timeout=3) as r:
            data = json.load(r)
    except (urllib.error.URLError, OSError, ValueError):
        return 0
    summary = (data.get("data") or {}).get("summary") or []
    return sum(1 for n in summary if (n.get("raylet") or {}).get("state") == "ALIVE")


@contextmanager
def local_two_node_cluster(num_cpus: int = 1, timeout_s: float = 90.0) -> Iterator[LocalCluster]:
    """Starts a head (with dashboard and Jobs API) and one worker node; yields when both are
    alive; stops every process it started on exit, whatever happened."""
    token = secrets.token_hex(16)
    env = _node_env(token)
    # Short paths: Ray's unix sockets live under the temp dir (a 107-byte limit).
    head_dir = Path(tempfile.mkdtemp(prefix="dtr-h-", dir="/tmp"))
    worker_dir = Path(tempfile.mkdtemp(prefix="dtr-w-", dir="/tmp"))
    temp_dirs = (head_dir, worker_dir)
    gcs_port, dash_port = free_port(), free_port()
    cluster = LocalCluster(
        dashboard_url=f"http://127.0.0.1:{dash_port}",
        gcs_address=f"127.0.0.1:{gcs_port}",
        token=token,
        temp_dirs=temp_dirs,
    )
    roots: list[psutil.Process] = []
    logs = [head_dir / "start.log", worker_dir / "start.log"]
    with ExitStack() as stack:

        @stack.callback
        def teardown() -> None:
            # Ray's daemons drain for a long time on SIGTERM; a test cluster need not wait.
            stop_processes(_ours(temp_dirs, roots), grace_s=3.0)
            for d in temp_dirs:
                shutil.rmtree(d, ignore_errors=True)

        head = _start_node(
            [
                "--head",
                "--node-ip-address=127.0.0.1",
                f"--port={gcs_port}",
                f"--dashboard-port={dash_port}",
                "--dashboard-host=127.0.0.1",
                "--include-dashboard=true",
                f"--ray-client-server-port={free_port()}",
                f"--dashboard-agent-listen-port={free_port()}",
                f"--metrics-export-port={free_port()}",
                f"--num-cpus={num_cpus}",
                "--num-gpus=0",
                f"--temp-dir={head_dir}",
            ],
            env,
            logs[0],
        )
        roots.append(psutil.Process(head.pid))
        _wait_for(
            "head node", lambda: _alive_nodes(cluster.dashboard_url, token) >= 1, timeout_s, logs
        )
        worker = _start_node(
            [
                f"--address={cluster.gcs_address}",
                "--node-ip-address=127.0.0.1",
                f"--dashboard-agent-listen-port={free_port()}",
                f"--metrics-export-port={free_port()}",
                f"--num-cpus={num_cpus}",
                "--num-gpus=0",
                f"--temp-dir={worker_dir}",
            ],
            env,
            logs[1],
        )
        roots.append(psutil.Process(worker.pid))
        _wait_for(
            "worker node", lambda: _alive_nodes(cluster.dashboard_url, token) >= 2, timeout_s, logs
        )
        yield cluster


DTMEM = Path(sys.executable).with_name("dtmem")
REPO = Path(__file__).resolve().parents[1]


def submit_cli(
    cluster: LocalCluster,
    command: list[str],
    *options: str,
    env: dict[str, str] | None = None,
    timeout_s: float = 180.0,
) -> subprocess.CompletedProcess[str]:
    """Runs ``dtmem submit --address <cluster> [options] -- command`` from the repository root,
    authenticated as the cluster's client; returns its exit status and output."""
    return subprocess.run(
        [str(DTMEM), "submit", "--address", cluster.dashboard_url, *options, "--", *command],
        cwd=REPO,
        env=env if env is not None else cluster.client_env(),
        capture_output=True,
        text=True,
        timeout=timeout_s,
    )
