"""Paths and YAML readers shared by the deployment-file tests and the worker-image tests."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[1]
DEPLOY = ROOT / "deploy"
ENTRYPOINT = ROOT / "workers" / "entrypoint.sh"
PLACEHOLDER = "CHANGE_ME"


def load_docs(path: Path) -> list[dict[str, Any]]:
    with path.open() as fh:
        return [doc for doc in yaml.safe_load_all(fh) if doc is not None]


def k8s_docs() -> list[tuple[str, dict[str, Any]]]:
    files = sorted(p for p in DEPLOY.glob("*.yaml") if p.name != "kustomization.yaml")
    return [(p.name, doc) for p in files for doc in load_docs(p)]


def find(kind: str, name: str | None = None) -> dict[str, Any]:
    found = [d for _, d in k8s_docs() if d["kind"] == kind and name in (None, d["metadata"]["name"])]
    assert len(found) == 1, f"expected one {kind} {name or ''}, found {len(found)}"
    return found[0]


def pod_spec(doc: dict[str, Any]) -> dict[str, Any]:
    spec: dict[str, Any] = doc["spec"]["template"]["spec"]
    return spec
