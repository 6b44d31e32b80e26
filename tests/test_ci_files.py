"""The hosting platform's CI workflow and the pre-commit hook that users put in their repositories.

ci.yml is checked against the GitHub workflow schema (check-jsonschema's vendored copy,
offline). The hook is checked by pre-commit itself, then run for real with
``pre-commit try-repo`` in a scratch repository: it installs devctl from this tree into its own
virtualenv (from the package index) and validates the staged workflow files it selects.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.deploy_helpers import ROOT

CI_FILE = ROOT / ".github" / "workflows" / "ci.yml"
HOOKS_FILE = ROOT / ".pre-commit-hooks.yaml"
BIN = Path(sys.executable).parent
GIT = [
    "git",
    "-c",
    "user.name=test",
    "-c",
    "user.email=test@example.invalid",
    "-c",
    "init.defaultBranch=main",
]


def ci() -> dict[str, Any]:
    with CI_FILE.open() as fh:
        doc: dict[str, Any] = yaml.safe_load(fh)
    return doc


def test_ci_runs_dot_ci_run_with_a_redis_service() -> None:
    doc = ci()
    triggers = doc[True]  # YAML 1.1 reads the key `on` as a boolean
    assert {"push", "pull_request"} <= set(triggers)
    (job,) = doc["jobs"].values()
    assert job["env"]["CI"] == "true", "distributed tests fail instead of skipping without Redis"
    assert 0 < job["timeout-minutes"] <= 90
    redis_service = job["services"]["redis"]
    assert re.fullmatch(r"redis:\d+\.\d+\.\d+", redis_service["image"])
    assert any(str(port).endswith("6379:6379") for port in redis_service["ports"])
    assert "--health-cmd" in redis_service["options"]
    runs = [step.get("run", "") for step in job["steps"]]
    assert runs[-1] == "bash .ci/run"
    assert (ROOT / ".ci" / "run").exists()


def test_ci_file_matches_the_github_workflow_schema() -> None:
    checker = BIN / "check-jsonschema"
    if not checker.exists():
        pytest.skip("check-jsonschema is not installed (pip install -e '.[dev]')")
    result = subprocess.run(
        [str(checker), "--builtin-schema", "vendor.github-workflows", str(CI_FILE)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def hook() -> dict[str, Any]:
    with HOOKS_FILE.open() as fh:
        hooks: list[dict[str, Any]] = yaml.safe_load(fh)
    (only,) = hooks
    return only


def test_hook_manifest_is_valid_for_pre_commit() -> None:
    spec = hook()
    assert spec["id"] == "devctl-validate"
    assert spec["language"] == "python"
    assert spec["entry"] == "devctl validate"
    assert spec["pass_filenames"] is True
    if not (BIN / "pre-commit").exists():
        pytest.skip("pre-commit is not installed (pip install -e '.[dev]')")
    check = subprocess.run([str(BIN / "pre-commit"), "validate-manifest", str(HOOKS_FILE)], timeout=60)
    assert check.returncode == 0


@pytest.mark.parametrize(
    ("path", "selected"),
    [
        ("workflows/deploy.yaml", True),
        ("ops/workflows/nightly.yml", True),
        ("devctl/release.yaml", True),
        ("release.devctl.yaml", True),
        (".github/workflows/ci.yml", False),
        ("config/app.yaml", False),
        ("workflows/README.md", False),
    ],
)
def test_hook_selects_workflow_yaml_only(path: str, selected: bool) -> None:
    spec = hook()
    chosen = re.search(spec["files"], path) is not None and re.search(spec["exclude"], path) is None
    assert chosen is selected


BAD_WORKFLOW = "name: bad\nsteps:\n  - name: a\n    command: '!true'\n    timout: 3\n"


def scratch_repo(root: Path, files: dict[str, str]) -> Path:
    root.mkdir(parents=True)
    for name, text in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(text)
    subprocess.run([*GIT, "init", "-q"], cwd=root, check=True)
    subprocess.run([*GIT, "add", "."], cwd=root, check=True)
    subprocess.run([*GIT, "commit", "-q", "-m", "scratch"], cwd=root, check=True)
    return root


def this_tree(root: Path) -> Path:
    """This project as a committed repository, as a user's `repo:` entry would fetch it."""
    keep = ["pyproject.toml", "README.md", ".pre-commit-hooks.yaml"]
    files = {name: (ROOT / name).read_text() for name in keep}
    for path in (ROOT / "devctl_dist").rglob("*.py"):
        files[str(path.relative_to(ROOT))] = path.read_text()
    return scratch_repo(root, files)


def test_hook_runs_devctl_validate_on_the_selected_files(tmp_path: Path) -> None:
    if not (BIN / "pre-commit").exists():
        pytest.skip("pre-commit is not installed (pip install -e '.[dev]')")
    if shutil.which("git") is None:
        pytest.skip("git is not installed")
    project = this_tree(tmp_path / "devctl")
    user = scratch_repo(
        tmp_path / "user",
        {
            "workflows/ok.yaml": (ROOT / "examples" / "dag.yaml").read_text(),
            "workflows/bad.yaml": BAD_WORKFLOW,
            "release.devctl.yaml": (ROOT / "examples" / "legacy.yaml").read_text(),
            ".github/workflows/ci.yml": CI_FILE.read_text(),
            "config/app.yaml": "not: a workflow\n",
        },
    )
    result = subprocess.run(
        [str(BIN / "pre-commit"), "try-repo", str(project), "devctl-validate", "--all-files"],
        cwd=user,
        capture_output=True,
        text=True,
        timeout=600,
        env={**os.environ, "PRE_COMMIT_HOME": str(tmp_path / "cache")},
    )
    out = result.stdout + result.stderr
    assert result.returncode == 1, out  # the hook failed: one file is invalid
    assert "OK: workflows/ok.yaml" in out and "OK: release.devctl.yaml" in out
    assert re.search(r"workflows/bad\.yaml.*timout", out), out
    assert "ci.yml" not in out.split("devctl validate", 1)[1] and "config/app.yaml" not in out
    assert "Traceback" not in out
