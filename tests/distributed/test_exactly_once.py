"""`--resume` runs no step and no attempt twice; a step waits in a queue no longer than its timeout;
signed messages and a scrubbed environment on the workers. Executions are counted from the
steps' own files."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import redis
import yaml

from devctl_dist.distributed import signing
from devctl_dist.distributed.app import TASK_NAME, create_app
from devctl_dist.distributed.runner import CeleryRunner
from devctl_dist.distributed.state import outcome_key
from devctl_dist.runners.base import StepSpec
from tests.distributed.cluster import SESSION, WorkerFactory, cluster_settings
from tests.evidence import run_id, wait_for_lines

pytestmark = pytest.mark.distributed

DEVCTL = str(Path(sys.executable).with_name("devctl"))


def _counted(tmp_path: Path, name: str, seconds: float) -> str:
    return f"!echo run >> {tmp_path}/{name}.count; sleep {seconds}"


def _lines(tmp_path: Path, name: str) -> int:
    path = tmp_path / f"{name}.count"
    return len(path.read_text().splitlines()) if path.exists() else 0


def _start(path: Path, env: dict[str, str]) -> tuple[subprocess.Popen[str], str]:
    proc = subprocess.Popen(
        [DEVCTL, "run", str(path), "--distributed", "--output", "plain"],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        env=env,
    )
    assert proc.stdout is not None
    match = re.search(r"run_id=(\S+)", proc.stdout.readline())
    assert match
    return proc, match.group(1)


def _resume(path: Path, rid: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [DEVCTL, "run", str(path), "--distributed", "--resume", rid, "--output", "plain"],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )


def _block(tmp_path: Path, queue: str, steps: list[dict[str, object]]) -> Path:
    path = tmp_path / "wf.yaml"
    block = {"parallel": {"name": "block", "on_failure": "continue", "steps": steps}}
    for step in steps:
        step["queue"] = queue
    path.write_text(yaml.safe_dump({"name": "once", "steps": [block]}, sort_keys=False))
    return path


def test_resume_after_sigkill_with_running_queued_and_retrying_steps(
    worker_factory: WorkerFactory, distributed_env: dict[str, str], tmp_path: Path
) -> None:
    """Worker with 2 processes; 4 sleeping steps (2 run, 2 queued) and a step whose attempt 1
    failed and attempt 2 runs: SIGKILL the coordinator, resume at once: every step ran once,
    the retrying one twice (attempt 1 and 2), and the run succeeds."""
    queue = f"t{SESSION}-once"
    worker_factory(queues=[queue], concurrency=3, label="once")
    retrying = (
        f"!echo run >> {tmp_path}/r.count; "
        f"if [ -e {tmp_path}/r.failed ]; then sleep 4; else touch {tmp_path}/r.failed; exit 1; fi"
    )
    steps: list[dict[str, object]] = [{"name": "r", "command": retrying, "retries": 1, "retry_delay": 0}]
    steps += [{"name": f"s{i}", "command": _counted(tmp_path, f"s{i}", 4)} for i in range(4)]
    env = {**os.environ, **distributed_env}
    proc, rid = _start(_block(tmp_path, queue, steps), env)
    wait_for_lines(tmp_path / "r.count", 2)  # attempt 2 runs
    proc.send_signal(signal.SIGKILL)
    proc.wait(10)
    resumed = _resume(tmp_path / "wf.yaml", rid, env)
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    assert _lines(tmp_path, "r") == 2
    assert [_lines(tmp_path, f"s{i}") for i in range(4)] == [1, 1, 1, 1]


def test_resume_after_ctrl_c_runs_the_cancelled_steps(
    worker_factory: WorkerFactory, distributed_env: dict[str, str], tmp_path: Path
) -> None:
    """Ctrl-C (exit 130) cancels the run; --resume runs what was cancelled, exactly once more,
    and what never started, exactly once."""
    queue = f"t{SESSION}-ctrlc"
    worker_factory(queues=[queue], concurrency=1, label="ctrlc")
    steps: list[dict[str, object]] = [
        {"name": f"c{i}", "command": _counted(tmp_path, f"c{i}", 3)} for i in range(3)
    ]
    env = {**os.environ, **distributed_env}
    proc, rid = _start(_block(tmp_path, queue, steps), env)
    deadline = time.monotonic() + 30
    while sum(_lines(tmp_path, f"c{i}") for i in range(3)) < 1 and time.monotonic() < deadline:
        time.sleep(0.05)
    proc.send_signal(signal.SIGINT)
    assert proc.wait(30) == 130
    before = [_lines(tmp_path, f"c{i}") for i in range(3)]
    assert sum(before) == 1  # one started, two never did
    resumed = _resume(tmp_path / "wf.yaml", rid, env)
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    assert [_lines(tmp_path, f"c{i}") for i in range(3)] == [n + 1 for n in before]


def test_step_timeout_covers_time_in_queue(
    worker_factory: WorkerFactory, redis_url: str, tmp_path: Path
) -> None:
    """A step stuck behind a busy worker fails once its timeout passed, and never runs later."""
    queue = f"t{SESSION}-busy"
    worker_factory(queues=[queue], concurrency=1, label="busy")
    rid = run_id()
    busy = StepSpec(rid, "busy", f"echo run >> {tmp_path}/busy; sleep 8", queue=queue)
    stuck = StepSpec(rid, "stuck", f"echo run >> {tmp_path}/stuck", queue=queue, timeout=2)

    async def scenario() -> None:
        runner = CeleryRunner(cluster_settings(redis_url, default_queue=queue, reconcile_interval=1.0))
        await runner.start()
        try:
            first = asyncio.create_task(runner.run(busy))
            await asyncio.to_thread(wait_for_lines, tmp_path / "busy", 1)
            began = time.monotonic()
            outcome = await asyncio.wait_for(runner.run(stuck), 30)
            assert outcome.timed_out and outcome.error is not None, outcome
            assert outcome.error.startswith(f"timed out after 2s waiting in queue '{queue}'"), outcome
            assert time.monotonic() - began < 8
            assert (await first).succeeded
        finally:
            await runner.close()

    asyncio.run(scenario())
    time.sleep(2)  # the worker is idle now: the timed-out step must not start
    assert not (tmp_path / "stuck").exists()


def test_forged_unsigned_message_does_not_run(
    worker_factory: WorkerFactory, redis_url: str, tmp_path: Path
) -> None:
    """A worker with DEVCTL_SIGNING_KEY runs a signed step, and neither an unsigned nor a
    wrongly signed one; the step never sees the worker's connection settings."""
    queue = f"t{SESSION}-signed"
    key = "test-signing-key-" + SESSION
    worker_factory(queues=[queue], concurrency=1, label="signed", extra_env={"DEVCTL_SIGNING_KEY": key})
    app = create_app(cluster_settings(redis_url, default_queue=queue))
    client = redis.Redis.from_url(redis_url)
    rid = run_id()

    def send(name: str, command: str, signature: str | None) -> str:
        spec = StepSpec(rid, name, command, queue=queue)
        kwargs = {} if signature is None else {"signature": signature}
        app.send_task(
            TASK_NAME, args=[rid, name, spec.to_dict()], kwargs=kwargs, task_id=spec.task_id, queue=queue
        )
        return spec.task_id

    try:
        unsigned = send("forged", f"echo pwned > {tmp_path}/forged", None)
        wrong = send("wrong", f"echo pwned > {tmp_path}/wrong", "0" * 64)
        good_spec = StepSpec(rid, "good", f"env > {tmp_path}/env; echo ok > {tmp_path}/good", queue=queue)
        body = good_spec.to_dict()
        good = send("good", good_spec.command, signing.sign(key.encode(), rid, "good", body, None))
        wait_for_lines(tmp_path / "good", 1)  # the queue is FIFO on one process: the forgeries came first
        assert not (tmp_path / "forged").exists() and not (tmp_path / "wrong").exists()
        assert client.get(outcome_key(unsigned)) is None and client.get(outcome_key(wrong)) is None
        assert client.get(outcome_key(good)) is not None
        environment = (tmp_path / "env").read_text()
        assert "DEVCTL_BROKER_URL" not in environment and "DEVCTL_SIGNING_KEY" not in environment
        assert redis_url not in environment and key not in environment
    finally:
        app.close()
        client.close()
