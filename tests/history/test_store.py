"""The run store: SQLite in WAL mode, written by several processes at once."""

from __future__ import annotations

import multiprocessing
import os
import sqlite3
from pathlib import Path

import pytest

from devctl_dist.history.fingerprint import changed_steps
from devctl_dist.history.paths import safe_name, state_dir
from devctl_dist.history.store import LOST, RunStore


def record(root: Path, run_id: str, steps: int) -> None:
    store = RunStore(root)
    names = [f"s{i}" for i in range(steps)]
    store.begin_run({"run_id": run_id, "workflow": "w", "started_at": 1.0}, names)
    for name in names:
        store.update_steps(run_id, {name: {"state": "succeeded", "exit_code": 0}})
    store.finish_run(run_id, "succeeded", 0, 2.0, {"succeeded": steps})


def test_state_dir_honours_devctl_home_then_xdg(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("DEVCTL_HOME", str(tmp_path / "home"))
    assert state_dir() == tmp_path / "home"
    monkeypatch.delenv("DEVCTL_HOME")
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "xdg"))
    assert state_dir() == tmp_path / "xdg" / "devctl"


def test_safe_names_are_distinct_file_names() -> None:
    assert "/" not in safe_name("deploy/api") and safe_name("a/b") != safe_name("a_b")


def test_a_run_and_its_steps_round_trip(tmp_path: Path) -> None:
    record(tmp_path, "w-12345678", 3)
    store = RunStore(tmp_path)
    run = store.get_run("w-1234")  # a unique prefix is enough
    assert run is not None and run["state"] == "succeeded" and run["exit_code"] == 0
    assert [s["name"] for s in store.steps("w-12345678")] == ["s0", "s1", "s2"]
    assert store.latest()["run_id"] == "w-12345678"  # type: ignore[index]
    assert sqlite3.connect(tmp_path / "runs.db").execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def test_two_processes_record_at_once(tmp_path: Path) -> None:
    context = multiprocessing.get_context("spawn")
    procs = [context.Process(target=record, args=(tmp_path, f"run-{i}", 200)) for i in range(2)]
    for proc in procs:
        proc.start()
    for proc in procs:
        proc.join(60)
        assert proc.exitcode == 0
    store = RunStore(tmp_path)
    for i in range(2):
        steps = store.steps(f"run-{i}")
        assert len(steps) == 200 and {s["state"] for s in steps} == {"succeeded"}


def test_a_running_run_whose_process_is_gone_is_lost(tmp_path: Path) -> None:
    store = RunStore(tmp_path)
    store.begin_run({"run_id": "dead", "workflow": "w", "started_at": 1.0}, ["a"])
    store.conn.execute("UPDATE runs SET pid = ? WHERE run_id = 'dead'", (_dead_pid(),))
    assert store.get_run("dead")["state"] == LOST  # type: ignore[index]


def test_resume_keeps_reused_steps_and_resets_the_others(tmp_path: Path) -> None:
    store = RunStore(tmp_path)
    store.begin_run({"run_id": "r", "workflow": "w", "started_at": 1.0}, ["a", "b"])
    store.update_steps("r", {"a": {"state": "succeeded"}, "b": {"state": "failed"}})
    store.begin_run({"run_id": "r", "workflow": "w", "started_at": 2.0}, ["a", "b"], keep={"a"})
    assert {s["name"]: s["state"] for s in store.steps("r")} == {"a": "succeeded", "b": "pending"}
    assert store.get_run("r")["resumes"] == 1  # type: ignore[index]


def test_changed_steps_names_added_changed_and_removed() -> None:
    assert changed_steps({"a": "1", "b": "2", "c": "3"}, {"a": "1", "b": "9", "d": "4"}) == ["b", "d", "c"]


def _dead_pid() -> int:
    proc = multiprocessing.get_context("spawn").Process(target=os.getpid)
    proc.start()
    proc.join()
    assert proc.pid is not None
    return proc.pid


def test_step_logs_location_is_the_documented_log_path(tmp_path: Path) -> None:
    from devctl_dist.history.paths import step_log_path
    from devctl_dist.history.recorder import StepLogs

    logs = StepLogs(tmp_path, "deploy-1/x")
    for name in ("build", "a/b c", "ünï", "." * 90):
        assert logs.location(name) == str(step_log_path(tmp_path, "deploy-1/x", name))
        assert logs.path(name) == step_log_path(tmp_path, "deploy-1/x", name)
