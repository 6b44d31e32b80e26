"""The worker image's commands, run for real: the entrypoint, `devctl worker`, Flower.

The entrypoint runs against a stand-in ``devctl`` that records its argv and waits
for SIGTERM; the distributed tests start a throwaway redis-server, then the real
worker (answering the manifest's liveness probe, draining on SIGTERM) and Flower.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.deploy_helpers import ENTRYPOINT, PLACEHOLDER, find, pod_spec
from tests.evidence import http_status

# --- workers/entrypoint.sh, run for real --------------------------------------------


@pytest.mark.parametrize("shell", ["sh", "bash", "dash"])
def test_entrypoint_parses(shell: str) -> None:
    if shutil.which(shell) is None:
        pytest.skip(f"{shell} not installed")
    subprocess.run([shell, "-n", str(ENTRYPOINT)], check=True, timeout=30)
    text = ENTRYPOINT.read_text()
    assert text.startswith("#!/bin/sh\n") and "\nset -eu\n" in text
    assert os.access(ENTRYPOINT, os.X_OK)


STUB = """#!/bin/sh
trap 'echo SIGTERM >> "$STUB_OUT"; exit 0' TERM
printf '%s\\n' "$$" "$@" > "$STUB_OUT.tmp" && mv "$STUB_OUT.tmp" "$STUB_OUT"
while :; do sleep 0.05; done
"""


@pytest.fixture
def stub_env(tmp_path: Path) -> dict[str, str]:
    """PATH with a stand-in `devctl` that records its pid and argv, then waits for SIGTERM."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "devctl").write_text(STUB)
    (bin_dir / "devctl").chmod(0o755)
    return {"PATH": f"{bin_dir}:/usr/bin:/bin", "STUB_OUT": str(tmp_path / "argv")}


def run_entrypoint(env: dict[str, str], *args: str) -> list[str]:
    """Start the entrypoint, wait for devctl to start, SIGTERM it; return pid check + argv."""
    proc = subprocess.Popen([str(ENTRYPOINT), *args], env=env)
    out = Path(env["STUB_OUT"])
    try:
        deadline = time.monotonic() + 30
        while not out.exists():
            assert proc.poll() is None, f"entrypoint exited with {proc.returncode}"
            assert time.monotonic() < deadline, "devctl never started"
            time.sleep(0.02)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0
    finally:
        proc.kill()
    pid, *argv, last = out.read_text().splitlines()
    assert int(pid) == proc.pid, "exec: devctl replaced the shell, so it gets the signals"
    assert last == "SIGTERM"
    return argv


WORKER_DEFAULT = ["worker", "--queues", "default", "--concurrency", "2"]
FLOWER_AUTH = "admin:" + PLACEHOLDER
ENTRYPOINT_CASES = [
    ({}, [], WORKER_DEFAULT),
    ({}, ["--loglevel", "debug"], [*WORKER_DEFAULT, "--loglevel", "debug"]),
    (
        {"DEVCTL_QUEUES": "gpu,default", "DEVCTL_CONCURRENCY": "8"},
        [],
        ["worker", "--queues", "gpu,default", "--concurrency", "8"],
    ),
    ({}, ["worker", "--queues", "gpu"], ["worker", "--queues", "gpu"]),
    ({}, ["run", "examples/dag.yaml", "--distributed"], ["run", "examples/dag.yaml", "--distributed"]),
    ({"FLOWER_BASIC_AUTH": FLOWER_AUTH}, ["flower"], ["flower", "--basic-auth", FLOWER_AUTH]),
    ({}, ["flower", f"--basic-auth={FLOWER_AUTH}"], ["flower", f"--basic-auth={FLOWER_AUTH}"]),
]


@pytest.mark.parametrize(("extra_env", "args", "expected"), ENTRYPOINT_CASES)
def test_entrypoint_execs_devctl(
    stub_env: dict[str, str], extra_env: dict[str, str], args: list[str], expected: list[str]
) -> None:
    assert run_entrypoint({**stub_env, **extra_env}, *args) == expected


def test_entrypoint_refuses_flower_without_auth(stub_env: dict[str, str]) -> None:
    done = subprocess.run(
        [str(ENTRYPOINT), "flower"], env=stub_env, capture_output=True, text=True, timeout=30
    )
    assert done.returncode == 64
    assert "FLOWER_BASIC_AUTH" in done.stderr
    assert not Path(stub_env["STUB_OUT"]).exists()


def test_entrypoint_runs_other_programs(stub_env: dict[str, str]) -> None:
    done = subprocess.run(
        [str(ENTRYPOINT), "sh", "-c", "echo from-sh"],
        env=stub_env,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert done.returncode == 0 and done.stdout == "from-sh\n"


# --- the image's commands for real: entrypoint, devctl worker/flower, the probe ----


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def wait_for(ready: Callable[[], bool], proc: subprocess.Popen[bytes], what: str) -> None:
    deadline = time.monotonic() + 120
    while not ready():
        assert proc.poll() is None, f"{what}: exited with {proc.returncode}"
        assert time.monotonic() < deadline, f"{what}: not ready after 120 s"
        time.sleep(0.1)


def accepts(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
        return True
    except OSError:
        return False


@pytest.fixture
def image_env(tmp_path: Path) -> Iterator[dict[str, str]]:
    """The image's environment: a throwaway redis-server (no stolen steps) and devctl on PATH."""
    binary = shutil.which("redis-server")
    if binary is None:
        if os.environ.get("CI") == "true":
            pytest.fail("redis-server is not installed")
        pytest.skip("redis-server is not installed: these tests need a real Redis")
    port = free_port()
    args = [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]
    server = subprocess.Popen([*args, "--dir", str(tmp_path)], stdout=subprocess.DEVNULL)
    try:
        wait_for(lambda: accepts(port), server, "redis-server")
        env = {k: v for k, v in os.environ.items() if not k.startswith(("DEVCTL_", "FLOWER_"))}
        env["PATH"] = f"{Path(sys.executable).parent}:{env['PATH']}"
        yield env | {"DEVCTL_BROKER_URL": f"redis://127.0.0.1:{port}/0"}
    finally:
        server.terminate()
        server.wait(timeout=30)


@pytest.mark.distributed
def test_worker_runs_answers_the_manifest_probe_and_drains(image_env: dict[str, str], tmp_path: Path) -> None:
    """Entrypoint -> real `devctl worker`, the manifest's probe, then SIGTERM -> warm shutdown."""
    log = tmp_path / "worker.log"
    with log.open("wb") as out:
        worker = subprocess.Popen(
            [str(ENTRYPOINT)], env=image_env, stdout=out, stderr=out, start_new_session=True
        )
    try:
        wait_for(lambda: b" ready." in log.read_bytes(), worker, "devctl worker")
        assert f"devctl-{worker.pid}@".encode() in log.read_bytes(), "exec: the worker kept the shell's pid"
        probe = pod_spec(find("Deployment", "devctl-worker"))["containers"][0]["livenessProbe"]["exec"][
            "command"
        ]
        host = socket.gethostname()  # the kubelet runs the probe with the pod's HOSTNAME
        this = subprocess.Popen(probe, env={**image_env, "HOSTNAME": host})
        other = subprocess.Popen(probe, env={**image_env, "HOSTNAME": f"not-{host}"})
        assert this.wait(timeout=120) == 0, "the probe finds this worker"
        assert other.wait(timeout=120) != 0, "the probe fails for a worker that did not reply"
        worker.send_signal(signal.SIGTERM)
        assert worker.wait(timeout=120) == 0
        assert b"Warm shutdown" in log.read_bytes()
    finally:
        if worker.poll() is None:
            os.killpg(worker.pid, signal.SIGKILL)
            worker.wait(timeout=30)


@pytest.mark.distributed
def test_flower_from_the_image_requires_basic_auth(image_env: dict[str, str]) -> None:
    """The entrypoint's `flower` asks for the FLOWER_BASIC_AUTH credentials; /healthcheck does not."""
    port = free_port()
    env = image_env | {"FLOWER_BASIC_AUTH": FLOWER_AUTH}
    command = [str(ENTRYPOINT), "flower", "--port", str(port)]
    flower = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    base = f"http://127.0.0.1:{port}"
    try:
        wait_for(lambda: accepts(port), flower, "devctl flower")
        assert http_status(f"{base}/healthcheck") == 200, "the health check skips auth"
        assert http_status(f"{base}/api/workers") == 401
        assert http_status(f"{base}/api/workers", FLOWER_AUTH) == 200
        assert http_status(f"{base}/api/workers", "admin:wrong") == 401
    finally:
        flower.terminate()
        flower.wait(timeout=60)
