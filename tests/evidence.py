"""What the tests assert on: files written by steps, and /proc (shared by every test directory)."""

from __future__ import annotations

import base64
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path


def run_id() -> str:
    return f"t{uuid.uuid4().hex[:10]}"


def pid_alive(pid: int) -> bool:
    """True if ``pid`` exists and is not a zombie."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def wait_for_pids(path: Path, count: int = 1, timeout: float = 30.0) -> list[int]:
    """Wait until a step has written ``count`` pids (one per line) to ``path``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if path.exists():
            pids = [int(line) for line in path.read_text().split() if line.strip().isdigit()]
            if len(pids) >= count:
                return pids
        time.sleep(0.05)
    raise AssertionError(f"no {count} pid(s) in {path} after {timeout:g}s")


def wait_for_lines(path: Path, count: int, timeout: float = 30.0) -> list[str]:
    """Wait until a step has written ``count`` lines to ``path``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if path.exists() and len(lines := path.read_text().splitlines()) >= count:
            return lines
        time.sleep(0.05)
    raise AssertionError(f"no {count} line(s) in {path} after {timeout:g}s")


def wait_gone(pids: list[int], timeout: float = 10.0) -> list[int]:
    """Wait until none of ``pids`` is alive; return the survivors."""
    deadline = time.monotonic() + timeout
    while any(pid_alive(p) for p in pids) and time.monotonic() < deadline:
        time.sleep(0.05)
    return [p for p in pids if pid_alive(p)]


def sleeper(pidfile: Path, seconds: int = 60) -> str:
    """A step whose tree is a shell, a background child in the same group, and a ``setsid`` escapee.

    Each writes its own pid to ``pidfile``; the shell then execs ``sleep``. The two
    children let go of the step's output pipes, so the step ends when its shell does.
    """
    quiet = ">/dev/null 2>&1"
    return (
        f"sh -c 'echo $$ >> {pidfile}; exec sleep {seconds}' {quiet} & "
        f"setsid sh -c 'echo $$ >> {pidfile}; exec sleep {seconds}' {quiet} & "
        f"echo $$ >> {pidfile}; exec sleep {seconds}"
    )


def http_status(url: str, auth: str | None = None) -> int:
    """The HTTP status of a GET, with optional basic auth (Flower's pages)."""
    request = urllib.request.Request(url)
    if auth:
        request.add_header("Authorization", "Basic " + base64.b64encode(auth.encode()).decode())
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            status: int = response.status
            return status
    except urllib.error.HTTPError as error:
        return error.code
