"""Paths and YAML readers shared by the deployment-file tests and the worker-image tests."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[1]
DEPLOY = ROOT / "deploy"
ENTRYPOINT = ROOT / "workers" / "entrypoint.sh"
COMPOSE = ROOT / "docker-compose.yml"
PLACEHOLDER = "CHANGE_ME"


def load_docs(path: Path) -> list[dict[str, Any]]:
    with path.open() as fh:
        return [doc for doc in yaml.safe_load_all(fh) if doc is not None]


def k8s_docs() -> list[tuple[str, dict[str, Any]]]:
    """Every Kubernetes object under deploy/ (kustomizations aside), with its path below deploy/."""
    files = sorted(p for p in DEPLOY.rglob("*.yaml") if p.name != "kustomization.yaml")
    return [(str(p.relative_to(DEPLOY)), doc) for p in files for doc in load_docs(p)]


def find(kind: str, name: str | None = None) -> dict[str, Any]:
    found = [d for _, d in k8s_docs() if d["kind"] == kind and name in (None, d["metadata"]["name"])]
    assert len(found) == 1, f"expected one {kind} {name or ''}, found {len(found)}"
    return found[0]


def pod_spec(doc: dict[str, Any]) -> dict[str, Any]:
    spec: dict[str, Any] = doc["spec"]["template"]["spec"]
    return spec


def compose() -> dict[str, Any]:
    docs = load_docs(COMPOSE)
    assert len(docs) == 1
    return docs[0]


def seconds(duration: str) -> int:
    """Compose durations such as ``10m`` or ``1h30m``."""
    parts = re.fullmatch(r"(?:(\d+)h)?(?:(\d+)m)?(?:(\d+)s)?", duration)
    assert parts and duration, f"bad duration {duration!r}"
    h, m, s = (int(x or 0) for x in parts.groups())
    return h * 3600 + m * 60 + s


def env_default(value: str) -> str:
    """The default of a compose ``${VAR:-default}`` reference, or the value itself."""
    match = re.fullmatch(r"\$\{\w+:-(.*)\}", str(value))
    return match.group(1) if match else str(value)
