"""From laptop to cluster: the manifests and recipes in cluster/, ``dtmem submit`` (unit and
against a real two-node Ray cluster on this machine, token auth on), and ``dtmem ui``."""

from __future__ import annotations

import json
import os
import queue
import re
import shlex
import signal
import socket
import subprocess
import threading
import time
import tomllib
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

import psutil
import pytest
import yaml
from typer.testing import CliRunner

from dtmem.cli import app
from dtmem.interrupts import JOB_STOP_WAIT_S, STOP_GRACE_S
from dtmem.job_stores import StoreError, is_local_address, resolve_stores
from dtmem.submit import (
    DEFAULT_ADDRESS,
    SubmitError,
    exit_code,
    load_runtime_env,
    resolve_address,
    resolve_auth_token,
)
from tests.cluster_fixture import (
    DTMEM,
    REPO,
    LocalCluster,
    free_port,
    local_two_node_cluster,
    stop_processes,
    submit_cli,
)

CLUSTER = REPO / "cluster"
SECRET = {"name": "dtmem-ray-token", "key": "auth_token"}


# --------------------------------------------------------------------------- manifests


def _load(name: str) -> dict[str, Any]:
    doc = yaml.safe_load((CLUSTER / name).read_text())
    assert isinstance(doc, dict)
    return doc


def _ray_version() -> str:
    """The Ray version pyproject.toml pins (``ray[...]==X``)."""
    deps = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]
    (pin,) = [d for d in deps if d.startswith("ray[")]
    return pin.split("==")[1]


def _env(container: dict[str, Any]) -> dict[str, Any]:
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in container.get("env", [])}


def _assert_token_auth(container: dict[str, Any]) -> None:
    env = _env(container)
    assert env.get("RAY_AUTH_MODE") == "token", container["name"]
    assert env.get("RAY_AUTH_TOKEN") == {"secretKeyRef": SECRET}, container["name"]


def _check_cluster_spec(spec: dict[str, Any]) -> None:
    """Head + a GPU worker group, our images, token auth in every Ray container."""
    assert spec["rayVersion"] == _ray_version()
    head = spec["headGroupSpec"]["template"]["spec"]["containers"][0]
    assert head["image"].startswith("dtmem:") and head["image"].endswith("-cpu")
    assert "nvidia.com/gpu" not in head.get("resources", {}).get("limits", {})
    assert {p["containerPort"] for p in head["ports"]} >= {6379, 8265}
    _assert_token_auth(head)
    gpu_groups = [
        g
        for g in spec["workerGroupSpecs"]
        if "nvidia.com/gpu" in g["template"]["spec"]["containers"][0]["resources"]["limits"]
    ]
    assert gpu_groups, "no worker group asks for nvidia.com/gpu"
    for group in gpu_groups:
        assert group["minReplicas"] <= group["replicas"] <= group["maxReplicas"]
        worker = group["template"]["spec"]["containers"][0]
        assert worker["image"].startswith("dtmem:") and worker["image"].endswith("-gpu")
        limits, requests = worker["resources"]["limits"], worker["resources"]["requests"]
        assert (
            int(limits["nvidia.com/gpu"]) >= 1
            and requests["nvidia.com/gpu"] == limits["nvidia.com/gpu"]
        )
        _assert_token_auth(worker)


def test_raycluster_manifest() -> None:
    doc = _load("raycluster.yaml")
    assert (doc["apiVersion"], doc["kind"]) == ("ray.io/v1", "RayCluster")
    _check_cluster_spec(doc["spec"])
    # The autoscaler sidecar talks to the GCS too, so it needs the token as well.
    autoscaler = {"name": "autoscaler", **doc["spec"]["autoscalerOptions"]}
    _assert_token_auth(autoscaler)


def test_rayjob_manifest() -> None:
    doc = _load("rayjob.yaml")
    assert (doc["apiVersion"], doc["kind"]) == ("ray.io/v1", "RayJob")
    spec = doc["spec"]
    assert shlex.split(spec["entrypoint"])[:2] == ["dtmem", "pretrain"]
    runtime_env = yaml.safe_load(spec["runtimeEnvYAML"])
    assert runtime_env["working_dir"] == "/home/ray/dtmem"  # where the Dockerfile puts the repo
    assert "pip" not in runtime_env and "conda" not in runtime_env
    assert runtime_env["env_vars"]["RAY_JOB_STOP_WAIT_TIME_S"] == str(JOB_STOP_WAIT_S)
    _check_cluster_spec(spec["rayClusterSpec"])
    submitter = spec["submitterPodTemplate"]["spec"]["containers"][0]
    assert "command" not in submitter  # KubeRay fills in `ray job submit ...`
    _assert_token_auth(submitter)


def test_runtime_env_ships_the_code_and_nothing_heavy() -> None:
    env = _load("runtime_env.yaml")
    assert env["working_dir"] == "."
    assert {".venv", ".git", "mlflow.db", "datasets", "checkpoints"} <= set(env["excludes"])
    assert env["env_vars"]["MLFLOW_TRACKING_URI"] == "${MLFLOW_TRACKING_URI}"
    assert not {"pip", "conda", "uv", "container", "image_uri"} & set(env)  # no network


def test_launcher_config_is_valid_for_ray() -> None:
    from ray.autoscaler._private.util import prepare_config, validate_config

    raw = _load("cluster-launcher.yaml")
    validate_config(prepare_config(raw))
    types = raw["available_node_types"]
    head = types[raw["head_node_type"]]
    assert head["resources"].get("GPU", 0) == 0
    (gpu,) = [t for name, t in types.items() if t["resources"].get("GPU", 0) >= 1]
    assert 0 <= gpu["min_workers"] <= gpu["max_workers"] <= raw["max_workers"]
    assert any("make setup" in c for c in raw["setup_commands"])  # installed as the Makefile does
    for cmd in raw["head_start_ray_commands"] + raw["worker_start_ray_commands"]:
        if "ray start" in cmd:
            assert "RAY_AUTH_MODE=token" in cmd
    assert "~/.ray/auth_token" in raw["file_mounts"]


def test_dockerfile_base_and_install_order() -> None:
    lines = [ln.strip() for ln in (CLUSTER / "Dockerfile").read_text().splitlines()]
    args = dict(
        ln.removeprefix("ARG ").split("=", 1) for ln in lines if ln.startswith("ARG ") and "=" in ln
    )
    (base,) = [ln.split()[1] for ln in lines if ln.startswith("FROM ")]
    assert base == "rayproject/ray:${RAY_TAG}"
    assert args["RAY_TAG"] == f"{_ray_version()}-py311"  # the CPU image; -gpu via build-arg
    makefile_torch = re.search(r"torch==([\d.]+)", (REPO / "Makefile").read_text())
    assert makefile_torch is not None and args["TORCH_VERSION"] == makefile_torch.group(1)
    runs = [i for i, ln in enumerate(lines) if ln.startswith("RUN ")]
    torch_at = [i for i in runs if "torch==" in lines[i]]
    project_at = [i for i in runs if re.search(r"pip install \.(\s|$)", lines[i])]
    assert torch_at and project_at and torch_at[0] < project_at[0]


# --------------------------------------------------------------------------- submit, unit


def test_address_precedence() -> None:
    assert resolve_address("http://a:1", {"RAY_ADDRESS": "http://b:2"}) == "http://a:1"
    assert resolve_address(None, {"RAY_ADDRESS": "http://b:2"}) == "http://b:2"
    assert resolve_address(None, {}) == DEFAULT_ADDRESS == "http://127.0.0.1:8265"


def test_auth_token_found_as_ray_finds_it(tmp_path: Path) -> None:
    home = tmp_path / "home"
    (home / ".ray").mkdir(parents=True)
    (home / ".ray" / "auth_token").write_text("from-default\n")
    token_file = tmp_path / "tok"
    token_file.write_text("  from-path \n")

    env = {"RAY_AUTH_TOKEN": "from-env", "RAY_AUTH_TOKEN_PATH": str(token_file)}
    assert resolve_auth_token(env, home) == "from-env"
    assert resolve_auth_token({"RAY_AUTH_TOKEN_PATH": str(token_file)}, home) == "from-path"
    assert resolve_auth_token({}, home) == "from-default"  # mode unset: sent if found
    assert resolve_auth_token({"RAY_AUTH_MODE": "disabled", **env}, home) is None
    assert resolve_auth_token({}, tmp_path / "nobody") is None

    with pytest.raises(SubmitError, match="no token found"):
        resolve_auth_token({"RAY_AUTH_MODE": "token"}, tmp_path / "nobody")
    with pytest.raises(SubmitError, match="cannot read"):
        resolve_auth_token({"RAY_AUTH_TOKEN_PATH": str(tmp_path / "missing")}, home)
    (tmp_path / "empty").write_text("\n")
    with pytest.raises(SubmitError, match="empty"):
        resolve_auth_token({"RAY_AUTH_TOKEN_PATH": str(tmp_path / "empty")}, home)
    with pytest.raises(SubmitError, match="RAY_AUTH_MODE"):
        resolve_auth_token({"RAY_AUTH_MODE": "tokens"}, home)


def test_runtime_env_is_resolved_for_sending(tmp_path: Path) -> None:
    (tmp_path / "repo").mkdir()
    path = tmp_path / "env.yaml"
    path.write_text(
        "working_dir: repo\nexcludes: [.venv]\n"
        "env_vars: {A: '${HERE}', B: '${UNSET_HERE}', C: fixed}\n"
    )
    env = load_runtime_env(path, tmp_path, {"HERE": "x"}, git_commit="abc123")
    assert env["working_dir"] == str(tmp_path / "repo")
    assert env["excludes"] == [".venv"]
    assert env["env_vars"] == {
        "A": "x",
        "C": "fixed",
        "DTMEM_GIT_COMMIT": "abc123",
        "RAY_JOB_STOP_WAIT_TIME_S": "30",  # ray job stop: SIGKILL only after the grace time
    }
    assert JOB_STOP_WAIT_S > STOP_GRACE_S

    project = load_runtime_env(CLUSTER / "runtime_env.yaml", REPO, {})
    assert project["working_dir"] == str(REPO)
    assert "MLFLOW_TRACKING_URI" not in project["env_vars"]  # unset here: cluster's own applies

    with pytest.raises(SubmitError, match="not found"):
        load_runtime_env(tmp_path / "nope.yaml", tmp_path, {})
    path.write_text("working_dir: missing\n")
    with pytest.raises(SubmitError, match="not a directory"):
        load_runtime_env(path, tmp_path, {})
    path.write_text("- a list\n")
    with pytest.raises(SubmitError, match="mapping"):
        load_runtime_env(path, tmp_path, {})


def test_exit_codes() -> None:
    assert [exit_code(s) for s in ("SUCCEEDED", "FAILED", "STOPPED")] == [0, 1, 1]
    assert exit_code("RUNNING") is None and exit_code("PENDING") is None


def test_submit_cli_bad_input_is_one_line_exit_2(tmp_path: Path) -> None:
    runner = CliRunner()
    result = runner.invoke(app, ["submit", "--"])
    assert result.exit_code == 2 and "nothing to run" in result.output
    result = runner.invoke(
        app, ["submit", "--runtime-env", str(tmp_path / "none.yaml"), "--", "dtmem", "demo"]
    )
    assert result.exit_code == 2 and "runtime env file not found" in result.output
    # Nothing listens there: a clear one-line error, not a traceback.
    closed = f"http://127.0.0.1:{free_port()}"
    result = runner.invoke(
        app,
        [
            "submit",
            "--address",
            closed,
            "--runtime-env",
            str(CLUSTER / "runtime_env.yaml"),
            "--",
            "dtmem",
            "demo",
        ],
        env={"RAY_AUTH_MODE": "disabled"},
    )
    assert result.exit_code == 2, result.output
    assert f"cannot reach the Ray Jobs API at {closed}" in result.output
    assert len(result.output.strip().splitlines()) == 1


# --------------------------------------------------------------------------- where results go

REMOTE = "http://head.example:8265"
PRETRAIN = ["dtmem", "pretrain", "pipelines/configs/smoke/pretrain.yaml"]


def test_cluster_locality() -> None:
    for local in ("http://127.0.0.1:8265", "http://localhost:8265", "127.0.0.2:6379"):
        assert is_local_address(local)
    for remote in (REMOTE, "http://10.0.0.5:8265", "ray://head:10001"):
        assert not is_local_address(remote)


def test_a_local_cluster_gets_the_users_stores_as_absolute_paths(tmp_path: Path) -> None:
    stores = resolve_stores(
        [*PRETRAIN, "--set", "checkpoint.dir=ck"],
        address="http://127.0.0.1:8265",
        cwd=tmp_path,
        working_dir=REPO,
        environ={"MINARI_DATASETS_PATH": "data"},
    )
    assert stores.env == {
        "MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path}/mlflow.db",  # the default, from here
        "MINARI_DATASETS_PATH": str(tmp_path / "data"),
    }
    assert stores.overrides == (f"checkpoint.dir={tmp_path / 'ck'}",)
    assert f"checkpoints {tmp_path / 'ck'}" in stores.summary
    # a command that is not a stage: its environment's paths, made absolute, nothing refused
    other = resolve_stores(
        ["python", "-c", "1"], address=REMOTE, cwd=tmp_path, working_dir=REPO,
        environ={"MLFLOW_TRACKING_URI": "sqlite:///x.db"},
    )  # fmt: skip
    assert other.env == {"MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path}/x.db"}
    assert other.overrides == ()


@pytest.mark.parametrize(
    ("sets", "environ", "expected"),
    [
        ([], {}, "tracking store sqlite:///"),  # the default ./mlflow.db
        ([], {"MLFLOW_TRACKING_URI": "http://127.0.0.1:5000"}, "tracking store http://127"),
        (["tracking.uri=sqlite:////shared/m.db"], {}, "a tracking server every node"),
        (["checkpoint.dir=ck"], {"MLFLOW_TRACKING_URI": "http://mlflow:5000"}, "relative"),
        (["data.root={tmp}"], {"MLFLOW_TRACKING_URI": "http://mlflow:5000"}, "on this machine"),
    ],
)
def test_a_remote_cluster_is_refused_stores_it_cannot_reach(
    tmp_path: Path, sets: list[str], environ: dict[str, str], expected: str
) -> None:
    command = [*PRETRAIN, "--set", "checkpoint.dir=/shared/ck"]
    for item in sets:
        command += ["--set", item.format(tmp=tmp_path)]
    with pytest.raises(StoreError) as err:
        resolve_stores(command, address=REMOTE, cwd=tmp_path, working_dir=REPO, environ=environ)
    message = str(err.value)
    assert expected in message and "\n" not in message
    assert "tracking server" in message or "shared storage" in message  # says what to use


def test_a_remote_cluster_gets_servers_and_shared_mounts(tmp_path: Path) -> None:
    shared = tmp_path / "nfs"
    shared.mkdir()
    mounts = f"/dev/sda1 / ext4 rw 0 0\nserver:/export {shared} nfs4 rw 0 0\n"
    stores = resolve_stores(
        [*PRETRAIN, "--set", f"checkpoint.dir={shared}/ck", "--set", f"data.root={shared}/d"],
        address=REMOTE,
        cwd=tmp_path,
        working_dir=REPO,
        environ={"MLFLOW_TRACKING_URI": "https://bob:pw@mlflow.example"},
        mounts=mounts,
    )
    assert stores.env == {
        "MLFLOW_TRACKING_URI": "https://bob:pw@mlflow.example",  # the job needs it whole
        "MINARI_DATASETS_PATH": f"{shared}/d",
    }
    assert stores.overrides == ()
    assert "pw" not in stores.summary and "mlflow.example" in stores.summary


def test_submit_refuses_an_unreachable_store_before_the_job_starts(tmp_path: Path) -> None:
    """Nothing listens at the address: the refusal comes first, in one line, exit 2."""
    result = CliRunner().invoke(
        app,
        ["submit", "--address", f"http://10.255.255.1:{free_port()}",
         "--runtime-env", str(CLUSTER / "runtime_env.yaml"), "--", *PRETRAIN],
        env={"MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path}/mlflow.db", "RAY_AUTH_MODE": "disabled"},
    )  # fmt: skip
    assert result.exit_code == 2, result.output
    (line,) = result.output.strip().splitlines()
    assert line.startswith(f"error: tracking store sqlite:///{tmp_path}/mlflow.db is on this")
    assert line.endswith("e.g. http://mlflow.internal:5000")
    assert not (tmp_path / "mlflow.db").exists()


def test_a_bad_config_is_refused_before_submitting(tmp_path: Path) -> None:
    from dtmem.config.base import ConfigError

    with pytest.raises(ConfigError, match="run_name"):
        resolve_stores(
            [*PRETRAIN, "--set", "run_name=../x"], address=REMOTE, cwd=tmp_path,
            working_dir=REPO, environ={},
        )  # fmt: skip


# --------------------------------------------------------------------------- ui


def _listeners(port: int) -> set[str]:
    return {
        c.laddr.ip
        for c in psutil.net_connections(kind="tcp")
        if c.status == psutil.CONN_LISTEN and c.laddr.port == port
    }


def _first_line_with(stream: IO[str], text: str, timeout_s: float) -> str:
    """The first line of ``stream`` containing ``text``, read in a thread so the wait is bounded."""
    lines: queue.Queue[str] = queue.Queue()
    threading.Thread(target=lambda: [lines.put(ln) for ln in stream], daemon=True).start()
    deadline = time.monotonic() + timeout_s
    while (left := deadline - time.monotonic()) > 0:
        try:
            line = lines.get(timeout=left)
        except queue.Empty:
            break
        if text in line:
            return line
    raise TimeoutError(f"no line with {text!r} within {timeout_s:.0f} s")


def test_ui_serves_on_localhost_and_stops_by_pid(tmp_path: Path) -> None:
    port = free_port()
    store = f"sqlite:///{tmp_path / 'mlflow.db'}"
    proc = subprocess.Popen(
        [str(DTMEM), "ui", "--port", str(port), "--backend-store-uri", store],
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        start_new_session=True,
    )
    started = [psutil.Process(proc.pid)]
    try:
        assert proc.stdout is not None
        # ~12 s on an idle machine; the bound leaves room for a loaded one.
        line = _first_line_with(proc.stdout, "MLflow UI:", timeout_s=60)
        url = f"http://127.0.0.1:{port}"
        assert url in line, line
        started += started[0].children(recursive=True)
        with urllib.request.urlopen(f"{url}/", timeout=10) as r:
            assert r.status == 200 and b"<html" in r.read().lower()
        assert _listeners(port) == {"127.0.0.1"}  # local only unless --host says otherwise

        os.kill(proc.pid, signal.SIGTERM)  # stopping dtmem ui stops the server with it
        assert proc.wait(timeout=20) == 0
        _, alive = psutil.wait_procs(started[1:], timeout=10)
        assert not alive and not _listeners(port)
    finally:
        stop_processes(started)  # whatever is left, by pid


def test_ui_refuses_a_busy_port() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        result = CliRunner().invoke(app, ["ui", "--port", str(port)])
    assert result.exit_code == 2 and "is not free" in result.output


# --------------------------------------------------------------------------- two nodes

# Runs inside a job: one task pinned to each alive node reports where it ran, whether it sees
# the shipped working directory, and the env passed through from the submitter.
_PROBE = """
import json, os, ray
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy as On
ray.init()
nodes = [n["NodeID"] for n in ray.nodes() if n["Alive"]]
@ray.remote(num_cpus=1)
def probe():
    return [ray.get_runtime_context().get_node_id(), os.path.isfile("dtmem/submit.py"),
            os.environ.get("MLFLOW_TRACKING_URI"), os.environ.get("DTMEM_GIT_COMMIT")]
got = ray.get([probe.options(scheduling_strategy=On(n, soft=False)).remote() for n in nodes])
print("PROBE " + json.dumps({"nodes": nodes, "got": got}))
"""


@pytest.fixture(scope="module")
def two_node_cluster() -> Iterator[LocalCluster]:
    """A head and a worker node on this machine, token auth on; stopped by pid afterwards."""
    with local_two_node_cluster(num_cpus=1) as cluster:
        yield cluster


@pytest.mark.slow
@pytest.mark.timeout(240)
def test_submit_runs_a_stage_and_exits_with_its_status(two_node_cluster: LocalCluster) -> None:
    ok = submit_cli(two_node_cluster, ["dtmem", "demo", "--steps", "40"])
    assert ok.returncode == 0, ok.stderr[-2000:]
    assert "synthetic recall task" in ok.stdout and "step    40" in ok.stdout  # followed logs
    assert ok.stderr.rstrip().endswith("SUCCEEDED")

    failed = submit_cli(two_node_cluster, ["python", "-c", "print('boom'); raise SystemExit(3)"])
    assert failed.returncode == 1
    assert "boom" in failed.stdout and failed.stderr.rstrip().endswith("FAILED")


@pytest.mark.slow
@pytest.mark.timeout(180)
def test_job_code_and_env_reach_both_nodes(two_node_cluster: LocalCluster) -> None:
    def head() -> str | None:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True, text=True)
        return out.stdout.strip() or None

    uri = "sqlite:////tmp/dtmem-submit-probe.db"  # only passed through, never opened
    before = head()  # others may commit while the job runs: the commit is one of these
    run = submit_cli(
        two_node_cluster,
        ["python", "-c", _PROBE],
        env=two_node_cluster.client_env(MLFLOW_TRACKING_URI=uri),
    )
    assert run.returncode == 0, run.stderr[-2000:] + run.stdout[-2000:]
    (line,) = [ln for ln in run.stdout.splitlines() if ln.startswith("PROBE ")]
    probe = json.loads(line.removeprefix("PROBE "))
    assert len(probe["nodes"]) == 2
    assert sorted(g[0] for g in probe["got"]) == sorted(probe["nodes"])
    commits = {before, head()}
    for _, has_code, seen_uri, seen_commit in probe["got"]:
        assert has_code and seen_uri == uri and seen_commit in commits


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_token_auth_is_honoured(two_node_cluster: LocalCluster) -> None:
    anonymous = submit_cli(
        two_node_cluster,
        ["python", "-c", "print(1)"],
        env=two_node_cluster.client_env(RAY_AUTH_MODE="disabled"),
    )
    assert anonymous.returncode == 2
    assert "Authentication required" in anonymous.stderr
    wrong = submit_cli(
        two_node_cluster,
        ["python", "-c", "print(1)"],
        env=two_node_cluster.client_env(RAY_AUTH_TOKEN="not-the-token"),
    )
    assert wrong.returncode == 2 and "refused" in wrong.stderr


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_ctrl_c_stops_following_not_the_job(two_node_cluster: LocalCluster) -> None:
    from ray.job_submission import JobStatus, JobSubmissionClient

    client = JobSubmissionClient(
        two_node_cluster.dashboard_url,
        headers={"Authorization": f"Bearer {two_node_cluster.token}"},
    )
    # Prints a word its source does not hold: Ray's log opens with the entrypoint line.
    sleeper = ["python", "-c", "import time; print('sleep' + 'ing', flush=True); time.sleep(300)"]
    no_wait = submit_cli(two_node_cluster, sleeper, "--no-wait")
    assert no_wait.returncode == 0
    (job_id,) = re.findall(r"submitted (\S+) to", no_wait.stderr)
    assert f"ray job stop --address {two_node_cluster.dashboard_url} {job_id}" in no_wait.stderr
    client.stop_job(job_id)

    follow = subprocess.Popen(
        [str(DTMEM), "submit", "--address", two_node_cluster.dashboard_url, "--", *sleeper],
        cwd=REPO,
        env=two_node_cluster.client_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert follow.stdout is not None and follow.stderr is not None
        submitted = follow.stderr.readline()
        while "submitted" not in submitted:
            assert submitted, "dtmem submit ended before submitting"
            submitted = follow.stderr.readline()
        (job_id,) = re.findall(r"submitted (\S+) to", submitted)
        while "sleeping" not in follow.stdout.readline():  # the job runs and we follow it
            assert follow.poll() is None
        follow.send_signal(signal.SIGINT)
        _, err = follow.communicate(timeout=30)
        assert follow.returncode == 130
        assert "keeps running" in err and "ray job stop --address" in err
        assert client.get_job_status(job_id) == JobStatus.RUNNING
    finally:
        if follow.poll() is None:
            follow.kill()
        client.stop_job(job_id)


_SLOW_TO_STOP = """
import pathlib, signal, sys, time
def stop(signum, frame):  # a stage unwinding: its runs end KILLED, files removed, ...
    time.sleep(5)
    pathlib.Path(sys.argv[1]).write_text("unwound")
    raise SystemExit(143)
signal.signal(signal.SIGTERM, stop)
pathlib.Path(sys.argv[2]).write_text("ready")
time.sleep(300)
"""


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_ray_job_stop_lets_the_job_unwind(two_node_cluster: LocalCluster, tmp_path: Path) -> None:
    """Ray SIGKILLs a stopped job 3 s after its SIGTERM unless the job's env says otherwise;
    ``dtmem submit`` gives it ``JOB_STOP_WAIT_S``: a handler that takes 5 s still finishes."""
    from ray.job_submission import JobStatus, JobSubmissionClient

    client = JobSubmissionClient(
        two_node_cluster.dashboard_url,
        headers={"Authorization": f"Bearer {two_node_cluster.token}"},
    )
    marker, ready = tmp_path / "unwound", tmp_path / "ready"
    job = submit_cli(
        two_node_cluster, ["python", "-c", _SLOW_TO_STOP, str(marker), str(ready)], "--no-wait"
    )
    assert job.returncode == 0, job.stderr[-2000:]
    (job_id,) = re.findall(r"submitted (\S+) to", job.stderr)
    deadline = time.monotonic() + 60
    # A file, not a line in the job's log: Ray's log opens with the entrypoint, script and all,
    # so any word the script prints is there before the script runs.
    while not ready.exists():
        assert time.monotonic() < deadline, "the job never started"
        time.sleep(0.2)
    client.stop_job(job_id)
    while client.get_job_status(job_id) not in (JobStatus.STOPPED, JobStatus.FAILED):
        assert time.monotonic() < deadline, "the job did not stop"
        time.sleep(0.5)
    info = client.get_job_info(job_id)
    assert marker.exists(), f"killed halfway through its handler: {info.status} {info.message}"


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_a_submitted_stage_lands_where_the_users_settings_say(
    two_node_cluster: LocalCluster, tmp_path: Path
) -> None:
    """Submitted from a directory of the user's with no MLFLOW_TRACKING_URI set, a relative
    $MINARI_DATASETS_PATH and the config's relative checkpoint directory: a tiny `dtmem
    pretrain` runs as a Ray job, reads its dataset from the user's root, and its MLflow run
    and checkpoint are found in that directory, not in Ray's temporary copy of the repository."""
    from mlflow.tracking import MlflowClient

    from dtmem.data.synthetic import write_metaworld_like

    dataset_id = "dtmem/submitted/reach-v3-v0"
    write_metaworld_like(tmp_path / "datasets", dataset_id, "reach-v3", episodes=3, steps=30)
    runtime_env = yaml.safe_load((CLUSTER / "runtime_env.yaml").read_text())
    runtime_env["working_dir"] = str(REPO)
    (tmp_path / "runtime_env.yaml").write_text(yaml.safe_dump(runtime_env))
    env = two_node_cluster.client_env(MINARI_DATASETS_PATH="datasets")
    env.pop("MLFLOW_TRACKING_URI", None)
    command = [
        "dtmem", "pretrain", "pipelines/configs/smoke/pretrain.yaml",
        "--set", f"data.datasets=[{{id: {dataset_id}, env: reach-v3}}]",
        "--set", "scaling.ray=false", "--set", "scaling.num_workers=1",
        "--set", "optim.max_steps=4", "--set", "optim.warmup_steps=2",
        "--set", "checkpoint.every_steps=2", "--set", "log_every=2",
        "--set", "model.n_layer=1", "--set", "model.d_model=16",
        "--set", "model.memory.slots=16", "--set", "data.batch_size=4",
        "--set", "validation.episodes=0", "--set", "registry.name=null",
        "--set", "progress=false", "--set", "tracking.system_metrics=false",
        "--set", "tracking.experiment=cluster-test", "--set", "run_name=submitted",
    ]  # fmt: skip
    done = subprocess.run(
        [str(DTMEM), "submit", "--address", two_node_cluster.dashboard_url,
         "--runtime-env", str(tmp_path / "runtime_env.yaml"), "--", *command],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=240,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:] + done.stdout[-2000:]
    assert (
        f"results: MLflow sqlite:///{tmp_path}/mlflow.db; datasets {tmp_path}/datasets; "
        f"checkpoints {tmp_path}/checkpoints" in done.stderr
    )
    run_dir = tmp_path / "checkpoints" / "submitted"
    assert list(run_dir.rglob("*.safetensors"))
    assert not (REPO / "checkpoints" / "submitted").exists()

    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path}/mlflow.db")
    experiment = client.get_experiment_by_name("cluster-test")
    assert experiment is not None
    (run,) = client.search_runs([experiment.experiment_id])
    assert run.info.status == "FINISHED" and run.data.tags["dtmem.stage"] == "pretrain"
    assert run.data.params["optim.max_steps"] == "4"
    assert run.data.params["checkpoint.dir"] == str(tmp_path / "checkpoints")
    assert [d.dataset.name for d in run.inputs.dataset_inputs] == [dataset_id]
