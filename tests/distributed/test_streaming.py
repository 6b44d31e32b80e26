"""Workers stream step output to the coordinator while steps run (real Redis, real ``celery worker``s).

The coordinator is a real ``devctl run --distributed``: its plain lines, its run
store and the worker's own log are read back; the stream itself is checked in Redis.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from datetime import datetime
from pathlib import Path

import redis

from devctl_dist.distributed.run_record import record_key, steps_key
from devctl_dist.distributed.streaming import output_key
from tests.distributed.cluster import WorkerProcess

DEVCTL = str(Path(sys.executable).with_name("devctl"))
SECRET = "tok-9f8e7d6c5b"


def run_plain(path: Path, env: dict[str, str], *extra: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [DEVCTL, "run", str(path), "--distributed", "-o", "plain", *extra],
        capture_output=True,
        text=True,
        timeout=180,
        env={**os.environ, **env},
    )


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def stamp(line: str) -> float:
    return datetime.fromisoformat(line.split(" ", 1)[0]).timestamp()


def test_lines_arrive_while_the_step_runs_masked_and_recorded(
    tmp_path: Path, distributed_env: dict[str, str], two_workers: list[WorkerProcess], redis_url: str
) -> None:
    path = tmp_path / "talk.yaml"
    path.write_text(
        f"""
name: talk
env: {{DEPLOY_TOKEN: {SECRET}}}
steps:
  - name: talk
    command: "!echo first $DEPLOY_TOKEN; sleep 2; echo oops >&2; echo last"
"""
    )
    results = tmp_path / "r.json"
    proc = run_plain(path, distributed_env, "--results-file", str(results))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    lines = proc.stdout.splitlines()
    first = next(line for line in lines if line.endswith("talk | first ***"))
    done = next(line for line in lines if " OK talk " in line)
    assert stamp(done) - stamp(first) > 1.5  # printed while the step was still running on the worker
    assert any(line.endswith("talk ! oops") for line in lines)
    assert SECRET not in proc.stdout + results.read_text()
    run_id = json.loads(results.read_text())["run_id"]
    logs = subprocess.run([DEVCTL, "logs", run_id, "talk"], capture_output=True, text=True, timeout=30)
    assert logs.stdout.splitlines() == ["first ***", "oops", "last"]  # the coordinator's copy
    home = Path(os.environ["DEVCTL_HOME"])
    worker_logs = [
        p.read_text() for p in (home / "worker-logs").rglob("talk-*.1.log") if run_id[:20] in str(p)
    ]
    assert worker_logs == ["first ***\noops\nlast\n"]  # the worker's own full log, masked too
    client = redis.Redis.from_url(redis_url)
    try:
        record = {_text(k): _text(v) for k, v in client.hgetall(record_key(run_id)).items()}
        assert record["state"] == "succeeded" and record["exit_code"] == "0"
        assert json.loads(client.hget(steps_key(run_id), "talk") or b"{}")["state"] == "succeeded"
        assert 0 < client.ttl(record_key(run_id)) <= 24 * 3600
        assert client.xlen(output_key(run_id)) == 0  # read entries are deleted: nothing piles up
    finally:
        client.close()


def test_a_big_output_reaches_the_coordinator_in_full_with_a_bounded_stream(
    tmp_path: Path, distributed_env: dict[str, str], two_workers: list[WorkerProcess], redis_url: str
) -> None:
    size = 8 * 1024 * 1024
    path = tmp_path / "big.yaml"
    path.write_text(
        f"""
name: big
steps:
  - name: big
    command: "!head -c {size} /dev/zero | tr '\\\\0' x | fold -w 99"
"""
    )
    client = redis.Redis.from_url(redis_url)
    results = tmp_path / "r.json"
    proc = subprocess.Popen(
        [DEVCTL, "run", str(path), "--distributed", "-o", "plain", "-q", "--results-file", str(results)],
        stdout=subprocess.DEVNULL,
        env={**os.environ, **distributed_env},
    )
    longest = 0
    try:
        while proc.poll() is None:  # sample the stream's length while the step runs
            for key in client.scan_iter("devctl:run:big-*:output"):
                longest = max(longest, int(client.xlen(key)))
            time.sleep(0.05)
        proc.wait(60)
    finally:
        proc.kill()
        client.close()
    assert proc.returncode == 0
    run_id = json.loads(results.read_text())["run_id"]
    home = Path(os.environ["DEVCTL_HOME"])
    logs = list((home / "logs").glob(f"{run_id[:20]}*/big-*.log"))
    assert len(logs) == 1
    assert logs[0].stat().st_size == size + -(-size // 99)  # every byte and newline, as the worker saw it
    assert longest <= 512  # BACKLOG entries of 16 KiB, plus one batch: Redis never holds the whole output
