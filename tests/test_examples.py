"""Every example runs as the README says, through the real `devctl` executable."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
DEVCTL = str(Path(sys.executable).with_name("devctl"))
EXPECTED = {
    "dag.yaml": (0, "dag"),
    "parallel-block.yaml": (0, "parallel"),
    "mixed.yaml": (0, "dag"),
    "legacy.yaml": (0, "sequential"),
    "failing.yaml": (1, "parallel"),
}


def test_every_example_is_covered() -> None:
    assert {p.name for p in (ROOT / "examples").glob("*.yaml")} == set(EXPECTED)


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_example_runs_with_expected_exit_code(name: str, tmp_path: Path) -> None:
    code, mode = EXPECTED[name]
    results = tmp_path / "results.json"
    proc = subprocess.run(
        [DEVCTL, "run", f"examples/{name}", "--output", "plain", "--results-file", str(results)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == code, proc.stdout + proc.stderr
    data = json.loads(results.read_text())
    assert data["mode"] == mode
    assert data["success"] is (code == 0)
    assert "Traceback" not in proc.stderr


def test_failing_example_kills_the_running_sibling(tmp_path: Path) -> None:
    results = tmp_path / "results.json"
    proc = subprocess.run(
        [DEVCTL, "run", "examples/failing.yaml", "--output", "json"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    data = json.loads(proc.stdout)
    status = {s["name"]: s["status"] for s in data["steps"]}
    assert status == {
        "Deploy API": "cancelled",
        "Deploy Worker": "failed",
        "Deploy Web": "skipped",
        "Verify": "skipped",
    }
    assert data["duration"] < 20  # the 30 s sibling did not run to its end
    assert not results.exists()


def test_mixed_example_passes_results_between_steps() -> None:
    proc = subprocess.run(
        [DEVCTL, "run", "examples/mixed.yaml", "--output", "json", "--var", "env=prod"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    steps = {s["name"]: s for s in json.loads(proc.stdout)["steps"]}
    assert steps["package"]["stdout"] == "PACKAGING V1.4.2 FOR PROD\n"
    assert steps["deploy"]["stdout"] == "deploy api,worker,web version 1.4.2\n"
    assert "released to prod" in steps["announce"]["stdout"]
