"""The deployment files (compose, Kubernetes manifests, worker image) hold together.

There is no Docker engine or cluster here: every YAML file is parsed, the facts that
make scaling, signals and security work are asserted, and ``kubectl kustomize`` builds
the manifests when kubectl is installed. The image's entrypoint and commands run for
real in tests/test_worker_image.py.
"""

from __future__ import annotations

import base64
import itertools
import re
import shutil
import subprocess
from typing import Any

import pytest
import yaml

from devctl_dist.settings import Settings
from devctl_dist.workflows.schema import WorkflowSchema
from tests.deploy_helpers import DEPLOY, ENTRYPOINT, PLACEHOLDER, ROOT, find, k8s_docs, load_docs, pod_spec

COMPOSE = ROOT / "docker-compose.yml"
DOCKERFILE = ROOT / "workers" / "Dockerfile"
NOT_IN_KUSTOMIZATION = {"secret.example.yaml", "coordinator-job.yaml", "kustomization.yaml"}
CLUSTER_SCOPED = {"Namespace"}
CONTAINER_KEYS = {
    "name", "image", "imagePullPolicy", "args", "command", "env", "envFrom", "ports", "resources",
    "readinessProbe", "livenessProbe", "startupProbe", "securityContext", "volumeMounts",
}  # fmt: skip


def containers() -> list[tuple[str, dict[str, Any]]]:
    kinds = {"Deployment", "StatefulSet", "Job"}
    return [
        (d["metadata"]["name"], c)
        for _, d in k8s_docs()
        if d["kind"] in kinds
        for c in pod_spec(d)["containers"]
    ]


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


# --- docker-compose.yml -------------------------------------------------------------


def test_compose_has_the_services_and_builds_the_worker_image() -> None:
    services = compose()["services"]
    assert {"redis", "worker", "flower", "coordinator"} <= set(services)
    for name in ("worker", "flower", "coordinator"):
        assert services[name]["build"] == {"context": ".", "dockerfile": "workers/Dockerfile"}
    assert "version" not in compose()


def test_compose_redis_is_persistent_and_healthchecked() -> None:
    redis = compose()["services"]["redis"]
    command = " ".join(redis["command"])
    assert "--appendonly yes" in command
    assert "--maxmemory-policy noeviction" in command
    assert "redis-cli ping" in " ".join(redis["healthcheck"]["test"])
    assert any(v.endswith(":/data") for v in redis["volumes"])
    assert "ports" not in redis, "Redis stays on the compose network"


def test_compose_worker_scales_and_drains() -> None:
    worker = compose()["services"]["worker"]
    assert "container_name" not in worker and "ports" not in worker
    assert worker["depends_on"]["redis"]["condition"] == "service_healthy"
    assert worker["environment"]["DEVCTL_BROKER_URL"] == "redis://redis:6379/0"
    assert seconds(worker["stop_grace_period"]) >= 300
    assert "command" not in worker, "the entrypoint's default is the worker command"


def test_compose_flower_is_loopback_only_with_auth_from_env() -> None:
    flower = compose()["services"]["flower"]
    assert flower["command"][:3] == ["flower", "--port", "5555"]
    assert flower["ports"], "Flower publishes its port"
    for port in flower["ports"]:
        host_ip = port["host_ip"] if isinstance(port, dict) else port.split(":")[0]
        assert host_ip == "127.0.0.1"
    assert re.fullmatch(r"\$\{FLOWER_BASIC_AUTH[^}]*\}", flower["environment"]["FLOWER_BASIC_AUTH"])


def test_compose_coordinator_is_a_tool_with_read_only_examples() -> None:
    coordinator = compose()["services"]["coordinator"]
    assert coordinator["profiles"] == ["tools"]
    assert "./examples:/workspace/examples:ro" in coordinator["volumes"]
    assert coordinator["depends_on"]["redis"]["condition"] == "service_healthy"


def test_compose_settings_are_real_settings_that_agree() -> None:
    env = compose()["services"]["worker"]["environment"]
    entrypoint_vars = {"DEVCTL_QUEUES", "DEVCTL_CONCURRENCY"}
    defaults: dict[str, str] = {}
    for key, value in env.items():
        if key in entrypoint_vars:
            continue
        assert key.removeprefix("DEVCTL_").lower() in Settings.model_fields, key
        default = re.fullmatch(r"\$\{\w+:-(.*)\}", str(value))
        defaults[key.removeprefix("DEVCTL_").lower()] = default.group(1) if default else value
    Settings.model_validate(defaults)  # raises when task_time_limit >= visibility_timeout


# --- deploy/ (Kubernetes) -----------------------------------------------------------


def test_every_manifest_names_its_object_in_the_namespace() -> None:
    docs = k8s_docs()
    assert len(docs) >= 10
    for filename, doc in docs:
        assert doc.get("apiVersion") and doc.get("kind"), filename
        assert doc["metadata"]["name"], filename
        if doc["kind"] not in CLUSTER_SCOPED:
            assert doc["metadata"].get("namespace") == "devctl", f"{filename}: {doc['kind']}"
    assert find("Namespace")["metadata"]["name"] == "devctl"


def test_kustomization_lists_the_long_running_manifests() -> None:
    (kustomization,) = load_docs(DEPLOY / "kustomization.yaml")
    assert kustomization["namespace"] == "devctl"
    expected = {p.name for p in DEPLOY.glob("*.yaml")} - NOT_IN_KUSTOMIZATION
    assert set(kustomization["resources"]) == expected


@pytest.mark.skipif(shutil.which("kubectl") is None, reason="kubectl not installed")
def test_kustomize_builds_the_manifests() -> None:
    out = subprocess.run(
        ["kubectl", "kustomize", str(DEPLOY)], capture_output=True, text=True, timeout=60, check=True
    ).stdout
    kinds = sorted(d["kind"] for d in yaml.safe_load_all(out) if d)
    assert kinds.count("Deployment") == 2
    assert {"Namespace", "ConfigMap", "StatefulSet", "ScaledObject", "TriggerAuthentication"} <= set(kinds)
    assert "Secret" not in kinds and "Job" not in kinds


def test_containers_use_known_fields_and_run_as_non_root() -> None:
    for owner, container in containers():
        assert set(container) <= CONTAINER_KEYS, f"{owner}: {set(container) - CONTAINER_KEYS}"
        assert container["securityContext"]["allowPrivilegeEscalation"] is False, owner
        assert container["resources"]["limits"]["memory"], owner
    for _, doc in k8s_docs():
        if doc["kind"] in {"Deployment", "StatefulSet", "Job"}:
            security = pod_spec(doc)["securityContext"]
            assert security["runAsNonRoot"] is True and security["runAsUser"] != 0


def test_redis_statefulset_persists_with_noeviction() -> None:
    redis = find("StatefulSet", "devctl-redis")
    args = " ".join(pod_spec(redis)["containers"][0]["args"])
    assert "--appendonly yes" in args and "--maxmemory-policy noeviction" in args
    assert "--requirepass $(REDIS_PASSWORD)" in args
    assert redis["spec"]["volumeClaimTemplates"][0]["metadata"]["name"] == "data"
    service = find("Service", redis["spec"]["serviceName"])
    assert service["spec"]["selector"] == redis["spec"]["template"]["metadata"]["labels"]


def test_worker_deployment_runs_devctl_worker_with_probes() -> None:
    worker = find("Deployment", "devctl-worker")
    spec = pod_spec(worker)
    assert spec["terminationGracePeriodSeconds"] >= 300
    assert "replicas" not in worker["spec"], "KEDA owns the replica count"
    (container,) = spec["containers"]
    assert container["args"][:3] == ["worker", "--queues", "default"]
    assert container["image"].split(":")[0] == "devctl-worker"
    assert container["resources"]["requests"]["cpu"]
    broker = {e["name"]: e for e in container["env"]}["DEVCTL_BROKER_URL"]
    assert broker["valueFrom"]["secretKeyRef"] == {"name": "devctl-broker", "key": "url"}
    for probe in ("readinessProbe", "livenessProbe"):
        command = container[probe]["exec"]["command"]
        assert command[:2] == ["sh", "-c"]
        assert "celery -A devctl_dist.distributed.app:app inspect ping" in command[2]
        assert "@$HOSTNAME" in command[2]
        assert "worker-ping" not in command[2]
        assert container[probe]["timeoutSeconds"] >= 10


def test_keda_scales_the_worker_deployment_on_the_default_queue() -> None:
    scaled = find("ScaledObject")
    target = scaled["spec"]["scaleTargetRef"]
    assert target.get("kind", "Deployment") == "Deployment"
    assert target["name"] == find("Deployment", "devctl-worker")["metadata"]["name"]
    (trigger,) = scaled["spec"]["triggers"]
    assert trigger["type"] == "redis"
    assert trigger["metadata"]["listName"] == "default"
    assert trigger["metadata"]["address"].startswith("devctl-redis.devctl.svc")
    assert all(isinstance(v, str) for v in trigger["metadata"].values()), "KEDA metadata are strings"
    auth = find("TriggerAuthentication", trigger["authenticationRef"]["name"])
    assert auth["spec"]["secretTargetRef"][0]["name"] == "devctl-broker"


def test_flower_is_internal_only() -> None:
    flower = find("Deployment", "devctl-flower")
    (container,) = pod_spec(flower)["containers"]
    assert container["args"][:3] == ["flower", "--port", "5555"]
    auth = {e["name"]: e for e in container["env"]}["FLOWER_BASIC_AUTH"]
    assert "secretKeyRef" in auth["valueFrom"]
    assert container["readinessProbe"]["httpGet"]["path"] == "/healthcheck"
    assert find("Service", "devctl-flower")["spec"].get("type", "ClusterIP") == "ClusterIP"
    exposed = [d for _, d in k8s_docs() if d["kind"] in {"Ingress", "Route", "HTTPRoute"}]
    assert not exposed
    for _, doc in k8s_docs():
        if doc["kind"] == "Service":
            assert doc["spec"].get("type", "ClusterIP") == "ClusterIP"


def test_coordinator_job_runs_a_valid_dag_from_its_configmap() -> None:
    job = find("Job")
    spec = pod_spec(job)
    (container,) = spec["containers"]
    assert container["args"] == ["run", "/workflows/dag.yaml", "--distributed"]
    mount = next(m for m in container["volumeMounts"] if m["mountPath"] == "/workflows")
    volume = next(v for v in spec["volumes"] if v["name"] == mount["name"])
    configmap = find("ConfigMap", volume["configMap"]["name"])
    workflow = WorkflowSchema.model_validate(yaml.safe_load(configmap["data"]["dag.yaml"]))
    assert workflow.is_dag


def test_shared_config_names_real_settings_that_agree() -> None:
    data = find("ConfigMap", "devctl-config")["data"]
    fields = {key.removeprefix("DEVCTL_").lower(): value for key, value in data.items()}
    assert set(fields) <= set(Settings.model_fields)
    assert Settings.model_validate(fields).default_queue == "default"
    for owner, container in containers():
        if container["image"].startswith("devctl-worker"):
            assert {"configMapRef": {"name": "devctl-config"}} in container["envFrom"], owner


def test_referenced_secret_keys_exist_in_the_example() -> None:
    example = {d["metadata"]["name"]: d for d in load_docs(DEPLOY / "secret.example.yaml")}
    refs = [
        e["valueFrom"]["secretKeyRef"]
        for _, c in containers()
        for e in c.get("env", [])
        if "secretKeyRef" in e.get("valueFrom", {})
    ]
    refs += [
        r for _, d in k8s_docs() if d["kind"] == "TriggerAuthentication" for r in d["spec"]["secretTargetRef"]
    ]
    assert refs
    for ref in refs:
        assert ref["key"] in example[ref["name"]]["stringData"], ref


# --- no credentials anywhere --------------------------------------------------------


def secret_values() -> list[str]:
    values = []
    for _, doc in k8s_docs():
        if doc["kind"] == "Secret":
            values += list(doc.get("stringData", {}).values())
            values += [base64.b64decode(v).decode() for v in doc.get("data", {}).values()]
    return values


def test_secrets_hold_only_the_placeholder() -> None:
    values = secret_values()
    assert values
    for value in values:
        leftover = value.replace(PLACEHOLDER, "")
        assert PLACEHOLDER in value, value
        assert not re.search(r":[^/@:]+@", leftover), f"a password besides the placeholder: {value}"


SECRET_NAME = re.compile(r"(?i)password|passwd|secret|token|basic[-_]?auth|requirepass")


def is_reference(value: str) -> bool:
    """An env or secret reference (``${VAR}``, ``$(VAR)``) or the example placeholder."""
    return value.startswith(("${", "$(")) or PLACEHOLDER in value


def secret_literals(node: Any, path: str = "") -> list[str]:
    """Password-like values written into a YAML tree: named keys, env entries, CLI flags."""
    found: list[str] = []
    if isinstance(node, dict):
        if SECRET_NAME.search(str(node.get("name", ""))) and isinstance(node.get("value"), str):
            found.append(f"{path}.{node['name']}={node['value']}")
        for key, value in node.items():
            literal = isinstance(value, str | int) and not isinstance(value, bool)
            if SECRET_NAME.search(str(key)) and literal and not is_reference(str(value)):
                found.append(f"{path}.{key}={value}")
            found += secret_literals(value, f"{path}.{key}")
    elif isinstance(node, list):
        for flag, value in itertools.pairwise(node):
            is_flag = isinstance(flag, str) and flag.startswith("--") and SECRET_NAME.search(flag)
            if is_flag and not is_reference(str(value)):
                found.append(f"{path}: {flag} {value}")
        for i, item in enumerate(node):
            found += secret_literals(item, f"{path}[{i}]")
    return found


def test_no_plaintext_password_in_any_yaml() -> None:
    trees = [("docker-compose.yml", compose()), *k8s_docs()]
    for filename, tree in trees:
        assert secret_literals(tree) == [], filename


def test_no_password_in_any_url() -> None:
    files = [COMPOSE, DOCKERFILE, ENTRYPOINT, ROOT / "docs" / "deploy.md", *DEPLOY.glob("*.yaml")]
    url_password = re.compile(r"\w+://[^/\s:@]*:([^@\s/]+)@")
    for path in files:
        for match in url_password.finditer(path.read_text()):
            assert match.group(1) in {PLACEHOLDER, "$PASS"}, f"{path.name}: {match.group(0)}"


# --- workers/Dockerfile and .dockerignore ------------------------------------------


def dockerfile_instructions() -> list[tuple[str, str]]:
    text = DOCKERFILE.read_text().replace("\\\n", " ")
    lines = [line.strip() for line in text.splitlines() if line.strip() and not line.lstrip().startswith("#")]
    return [(line.split(None, 1)[0].upper(), line.split(None, 1)[1]) for line in lines]


def test_dockerfile_installs_the_project_as_a_non_root_user() -> None:
    steps = dockerfile_instructions()
    assert steps[0] == ("FROM", "python:3.11-slim")
    users = [arg for op, arg in steps if op == "USER"]
    assert users and users[-1].split(":")[0] not in {"root", "0"}
    last_user = max(i for i, (op, _) in enumerate(steps) if op == "USER")
    assert all(op != "RUN" for op, _ in steps[last_user:]), "nothing runs as root after USER"
    assert any(op == "RUN" and "pip install /src" in arg for op, arg in steps)
    copies = [arg.split() for op, arg in steps if op == "COPY"]
    installed_entrypoint = next(c[-1] for c in copies if c[0] == "workers/entrypoint.sh")
    entrypoint = next(arg for op, arg in steps if op == "ENTRYPOINT")
    assert installed_entrypoint in entrypoint


def test_dockerfile_bakes_in_no_secret() -> None:
    for op, arg in dockerfile_instructions():
        assert op != "ADD", "COPY only: ADD fetches URLs and unpacks archives"
        if op in {"ENV", "ARG"}:
            assert not re.search(r"(?i)password|secret|token|broker_url|basic_auth", arg), arg
        if op == "COPY":
            assert not re.search(r"(?i)\.env\b|secret", arg), arg


def test_dockerignore_keeps_local_state_out_but_the_package_in() -> None:
    patterns = {line.strip() for line in (ROOT / ".dockerignore").read_text().splitlines()}
    assert {".venv", ".git", "**/__pycache__", ".env"} <= patterns
    needed = {"pyproject.toml", "README.md", "devctl_dist", "workers", "workers/entrypoint.sh"}
    assert not needed & patterns
