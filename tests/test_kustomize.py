"""``kubectl kustomize`` builds deploy/ and deploy/coordinator/, and one image setting rewrites both.

Runs only where kubectl is installed (it bundles kustomize); offline, no cluster needed.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.deploy_helpers import DEPLOY

# .ci/run installs kubectl when missing; under CI=true a missing one fails instead of skipping
pytestmark = pytest.mark.skipif(
    shutil.which("kubectl") is None and os.environ.get("CI") != "true", reason="kubectl not installed"
)


def build(path: Path) -> list[dict[str, Any]]:
    out = subprocess.run(
        ["kubectl", "kustomize", str(path)], capture_output=True, text=True, timeout=60, check=True
    ).stdout
    return [d for d in yaml.safe_load_all(out) if d]


def images(docs: list[dict[str, Any]]) -> dict[str, str]:
    """Container name -> image, over every pod template in ``docs``."""
    return {
        f"{d['metadata']['name']}/{c['name']}": c["image"]
        for d in docs
        if d["kind"] in {"Deployment", "StatefulSet", "Job"}
        for c in d["spec"]["template"]["spec"]["containers"]
    }


def test_kustomize_builds_the_long_running_manifests() -> None:
    kinds = sorted(d["kind"] for d in build(DEPLOY))
    assert kinds.count("Deployment") == 2
    expected = {"Namespace", "ConfigMap", "StatefulSet", "ScaledObject", "TriggerAuthentication"}
    assert expected | {"PodDisruptionBudget"} <= set(kinds)
    assert "Secret" not in kinds and "Job" not in kinds


def test_kustomize_builds_the_coordinator_job() -> None:
    docs = build(DEPLOY / "coordinator")
    assert sorted(d["kind"] for d in docs) == ["ConfigMap", "Job"]
    assert {d["metadata"]["namespace"] for d in docs} == {"devctl"}
    assert images(docs) == {"devctl-run-dag/coordinator": "devctl-worker:0.1.0"}


def test_one_image_setting_rewrites_workers_flower_and_coordinator(tmp_path: Path) -> None:
    """What the docs tell users to do: edit deploy/image/ once; both builds pull from the registry."""
    tree = tmp_path / "deploy"
    shutil.copytree(DEPLOY, tree)
    component = tree / "image" / "kustomization.yaml"
    text = component.read_text()
    assert "newName: devctl-worker\n" in text and "newTag: 0.1.0\n" in text
    text = text.replace("newName: devctl-worker\n", "newName: registry.example/team/devctl-worker\n")
    component.write_text(text.replace("newTag: 0.1.0\n", "newTag: 1.2.3\n"))
    built = images(build(tree)) | images(build(tree / "coordinator"))
    ours = {k: v for k, v in built.items() if not k.startswith("devctl-redis/")}
    assert set(ours) == {"devctl-worker/worker", "devctl-flower/flower", "devctl-run-dag/coordinator"}
    assert set(ours.values()) == {"registry.example/team/devctl-worker:1.2.3"}
    assert built["devctl-redis/redis"] == "redis:7.4.2"
