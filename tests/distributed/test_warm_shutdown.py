"""Scale-in never kills a running step: SIGTERM to a worker's main process is a warm shutdown.

Real processes only: a `devctl worker` subprocess on its own queue, `devctl run --distributed`
as a subprocess, and a 20 s step that writes a file when it is done. The worker is stopped
the way each recipe says: SIGTERM to its main process (what tini does in the image, and what
`docker compose stop` / Kubernetes do through it), and the README's shell recipe (`kill $W1`
from a job-control shell). `kill %1` signals the job's whole process group, pool processes
included: the last test shows that this kills the step, so the others can fail for the right reason.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

from tests.evidence import pid_alive, wait_for_pids, wait_gone

pytestmark = pytest.mark.distributed

BIN = Path(sys.executable).parent
DEVCTL = str(BIN / "devctl")
README = Path(__file__).resolve().parents[2] / "README.md"
STEP_SECONDS = 20


@dataclass
class Scene:
    """Files and environment of one scenario: a private queue, a workflow, its evidence files."""

    tmp: Path
    env: dict[str, str]

    @property
    def started(self) -> Path:
        return self.tmp / "started.pid"

    @property
    def done(self) -> Path:
        return self.tmp / "done"

    @property
    def results(self) -> Path:
        return self.tmp / "result.json"

    @property
    def worker_log(self) -> Path:
        return self.tmp / "devctl-worker-1.log"

    def workflow(self) -> Path:
        done = f"date +%s.%N > {self.done}.tmp && mv {self.done}.tmp {self.done}"  # never seen half-written
        step = f"!echo $$ > {self.started}; sleep {STEP_SECONDS}; {done}; echo finished"
        path = self.tmp / "long.yaml"
        path.write_text(
            yaml.safe_dump({"name": "warm-shutdown", "steps": [{"name": "long", "command": step}]})
        )
        return path

    def start_run(self) -> subprocess.Popen[bytes]:
        cmd = [DEVCTL, "run", str(self.workflow()), "--distributed", "--output", "plain"]
        with (self.tmp / "run.log").open("wb") as out:
            return subprocess.Popen(
                [*cmd, "--results-file", str(self.results)], env=self.env, stdout=out, stderr=out
            )

    def step_states(self) -> dict[str, str]:
        result = json.loads(self.results.read_text())
        return {step["name"]: step["status"] for step in result["steps"]}


@pytest.fixture
def scene(tmp_path: Path, distributed_env: dict[str, str]) -> Scene:
    """A queue no other test or session serves, so only this test's worker takes the step."""
    env = {**os.environ, **distributed_env, "DEVCTL_DEFAULT_QUEUE": f"warm-{uuid.uuid4().hex[:8]}"}
    env["PATH"] = f"{BIN}:{env['PATH']}"
    env["DEVCTL_HOME"] = str(tmp_path / "home")
    return Scene(tmp_path, env)


def wait_ready(log: Path, alive: subprocess.Popen[bytes], timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while b" ready." not in (log.read_bytes() if log.exists() else b""):
        assert alive.poll() is None, f"exited early: {log.read_text() if log.exists() else ''}"
        assert time.monotonic() < deadline, f"not ready after {timeout:g}s"
        time.sleep(0.1)


def children(pid: int) -> list[int]:
    """Direct children of ``pid`` (the worker's prefork pool), from /proc."""
    found = []
    for entry in Path("/proc").iterdir():
        try:
            if entry.name.isdigit() and int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1]) == pid:
                found.append(int(entry.name))
        except OSError:
            continue
    return found


@pytest.fixture
def reaper() -> Iterator[list[int]]:
    """Process groups to SIGKILL at teardown if a failed assertion left them running."""
    groups: list[int] = []
    yield groups
    for pgid in groups:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pgid, signal.SIGKILL)


def assert_step_outlives_sigterm(scene: Scene, worker_exited: Callable[[], bool]) -> float:
    """With SIGTERM sent: the worker stays up until the step is done; return when the step finished."""
    while not scene.done.exists():
        assert not worker_exited(), "the worker exited while its step was still running"
        time.sleep(0.05)
    return float(scene.done.read_text())


def test_sigterm_to_the_main_process_lets_a_20s_step_finish(scene: Scene, reaper: list[int]) -> None:
    """What tini, `docker compose stop` and a Kubernetes scale-in do: SIGTERM to the main process only."""
    with scene.worker_log.open("wb") as out:
        worker = subprocess.Popen(
            [DEVCTL, "worker", "--concurrency", "1"],
            env=scene.env,
            stdout=out,
            stderr=out,
            start_new_session=True,
        )
    reaper.append(worker.pid)
    wait_ready(scene.worker_log, worker)
    pool = children(worker.pid)
    run = scene.start_run()
    try:
        (step_pid,) = wait_for_pids(scene.started, 1, timeout=60)
        time.sleep(1.0)  # the coordinator has seen the step's lease
        signalled = time.time()
        worker.send_signal(signal.SIGTERM)
        finished = assert_step_outlives_sigterm(scene, lambda: worker.poll() is not None)
        assert finished - signalled > STEP_SECONDS / 2, "the step ran on after the SIGTERM, not killed early"
        assert run.wait(STEP_SECONDS + 60) == 0, (scene.tmp / "run.log").read_text()
        assert worker.wait(60) == 0, "the worker exits cleanly once its step is done"
    finally:
        if run.poll() is None:
            run.kill()
            run.wait()
    assert scene.step_states() == {"long": "succeeded"}
    assert b"Warm shutdown" in scene.worker_log.read_bytes()
    assert pool and wait_gone([*pool, step_pid], 10) == []


def readme_lines() -> tuple[str, str]:
    """The README's command starting the first worker, and its stop command."""
    text = README.read_text()
    start = re.search(r"^devctl worker --concurrency \d+ > (\S+) 2>&1 & W1=\$!$", text, re.M)
    stop = re.search(r"^kill \$W1\b.*$", text, re.M)
    assert start and stop, "README: the worker recipe ('... & W1=$!' and 'kill $W1 ...') is gone"
    return start.group(0), stop.group(0)


def shell_recipe(scene: Scene, stop: str) -> subprocess.Popen[bytes]:
    """A job-control shell (as typed in a terminal) running the README's worker line, then ``stop``.

    With job control each background job is its own process group, as in an interactive
    shell: that is what makes `kill %1` reach the pool processes.
    """
    start, _ = readme_lines()
    start = re.sub(r"> \S+", f"> {scene.worker_log}", start.replace("--concurrency 2", "--concurrency 1"))
    go = scene.tmp / "go"
    script = "\n".join(
        [
            "set -m",
            start,
            f'echo "$W1" > {scene.tmp / "worker.pid"}',
            f"while [ ! -e {go} ]; do sleep 0.05; done",
            stop,
            "wait",
            f'echo "$?" > {scene.tmp / "worker.exit"}',
        ]
    )
    return subprocess.Popen(["bash", "-c", script], env=scene.env, start_new_session=True)


def test_the_readme_recipe_stops_a_shell_worker_warmly(scene: Scene, reaper: list[int]) -> None:
    """README, "Run distributed on one machine": `... & W1=$!`, later `kill $W1 ...`."""
    _, stop = readme_lines()
    shell = shell_recipe(scene, stop)
    reaper.append(shell.pid)
    (worker_pid,) = wait_for_pids(scene.tmp / "worker.pid", 1, timeout=30)
    reaper.append(worker_pid)  # set -m: the worker leads its own process group
    wait_ready(scene.worker_log, shell)
    run = scene.start_run()
    try:
        wait_for_pids(scene.started, 1, timeout=60)
        time.sleep(1.0)
        (scene.tmp / "go").touch()
        assert_step_outlives_sigterm(scene, lambda: not pid_alive(worker_pid))
        assert run.wait(STEP_SECONDS + 60) == 0, (scene.tmp / "run.log").read_text()
        assert shell.wait(60) == 0
    finally:
        if run.poll() is None:
            run.kill()
            run.wait()
    assert scene.step_states() == {"long": "succeeded"}
    assert (scene.tmp / "worker.exit").read_text().strip() == "0"


def test_kill_percent_one_kills_the_step(scene: Scene, reaper: list[int]) -> None:
    """The old recipe, as the control: `kill %1` reaches the pool process and the step fails."""
    shell = shell_recipe(scene, "kill %1")
    reaper.append(shell.pid)
    (worker_pid,) = wait_for_pids(scene.tmp / "worker.pid", 1, timeout=30)
    reaper.append(worker_pid)
    wait_ready(scene.worker_log, shell)
    run = scene.start_run()
    try:
        (step_pid,) = wait_for_pids(scene.started, 1, timeout=60)
        time.sleep(1.0)
        (scene.tmp / "go").touch()
        assert wait_gone([step_pid], 15) == [], "the step's shell died with its pool process"
        assert run.wait(STEP_SECONDS + 60) == 1, (scene.tmp / "run.log").read_text()
    finally:
        if run.poll() is None:
            run.kill()
            run.wait()
    assert not scene.done.exists()
    assert scene.step_states()["long"] != "succeeded"
