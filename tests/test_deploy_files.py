"""The deployment files (compose, Kubernetes manifests, worker image) hold together.

There is no Docker engine or cluster here: every YAML file is parsed and the facts that
make scaling, signals and security work are asserted. ``kubectl kustomize`` builds the
manifests in tests/test_kustomize.py; compose is checked in tests/test_compose_file.py.
The image's entrypoint and commands run for real in tests/test_worker_image.py.
"""

from __future__ import annotations

import base64
import itertools
import re
from typing import Any

import yaml

from devctl_dist.settings import Settings
from devctl_dist.workflows.schema import WorkflowSchema
from tests.deploy_helpers import (
    COMPOSE,
    DEPLOY,
    ENTRYPOINT,
    PLACEHOLDER,
    ROOT,
    compose,
    find,
    k8s_docs,
    load_docs,
    pod_spec,
)

DOCKERFILE = ROOT / "workers" / "Dockerfile"
NOT_IN_KUSTOMIZATION = {"secret.example.yaml", "kustomization.yaml"}
CLUSTER_SCOPED = {"Namespace"}
PINNED_TAG = re.compile(r"\d+\.\d+[\w.-]*")  # a version such as 0.1.0 or 7.4.2, never `latest` or `7`
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
    assert kustomization["components"] == ["image"]
    assert "images" not in kustomization, "the image is set once, in deploy/image/"


def test_coordinator_has_its_own_kustomization_sharing_the_image() -> None:
    (kustomization,) = load_docs(DEPLOY / "coordinator" / "kustomization.yaml")
    assert kustomization["namespace"] == "devctl"
    assert kustomization["resources"] == ["job.yaml"]
    assert kustomization["components"] == ["../image"]
    (component,) = load_docs(DEPLOY / "image" / "kustomization.yaml")
    assert component["kind"] == "Component"
    (image,) = component["images"]
    assert image["name"] == "devctl-worker" and PINNED_TAG.fullmatch(str(image["newTag"]))


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


# --- scale-in never kills a running step --------------------------------------------


def test_worker_grace_period_covers_the_maximum_step_time() -> None:
    config = Settings.model_validate(
        {k.removeprefix("DEVCTL_").lower(): v for k, v in find("ConfigMap", "devctl-config")["data"].items()}
    )
    grace = pod_spec(find("Deployment", "devctl-worker"))["terminationGracePeriodSeconds"]
    assert grace >= config.hard_time_limit + config.kill_grace + 30
    assert config.hard_time_limit < config.visibility_timeout


def test_worker_pod_disruption_budget_selects_the_workers() -> None:
    budget = find("PodDisruptionBudget", "devctl-worker")
    assert budget["apiVersion"] == "policy/v1"
    assert budget["spec"]["maxUnavailable"] == 1 and "minAvailable" not in budget["spec"]
    worker = find("Deployment", "devctl-worker")
    assert budget["spec"]["selector"] == worker["spec"]["selector"]


def test_keda_scale_in_is_slow_and_its_comment_says_what_cooldown_does() -> None:
    spec = find("ScaledObject")["spec"]
    assert spec["minReplicaCount"] >= 1
    scale_down = spec["advanced"]["horizontalPodAutoscalerConfig"]["behavior"]["scaleDown"]
    assert 0 < scale_down["stabilizationWindowSeconds"] <= 3600  # the HPA rejects more
    assert scale_down["policies"] == [{"type": "Pods", "value": 1, "periodSeconds": 60}]
    text = (DEPLOY / "worker-scaledobject.yaml").read_text()
    field = re.search(r"^ +cooldownPeriod: \d+$", text, re.M)
    assert field
    lines = text[: field.start()].splitlines()
    comment = " ".join(line.strip("# ") for line in lines[-4:])
    assert "only applies to scaling to ZERO" in comment and "stabilizationWindowSeconds" in comment


def test_every_image_is_pinned() -> None:
    for owner, container in containers():
        name, _, tag = container["image"].rpartition(":")
        assert name and PINNED_TAG.fullmatch(tag), f"{owner}: {container['image']}"


def test_docs_agree_on_a_killed_worker() -> None:
    """Every text that says what happens to a killed worker's step says it fails as lost."""
    texts = {
        path.name: path.read_text()
        for path in (COMPOSE, DEPLOY / "worker-deployment.yaml", ROOT / "docs" / "deploy.md")
    }
    texts["distributed.md"] = (ROOT / "docs" / "distributed.md").read_text()
    for name, text in texts.items():
        assert "was lost" in text, name
        for line in text.splitlines():
            assert not re.search(r"(killed|stopped|lost|dies).*re-?deliver", line, re.I), f"{name}: {line}"


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
    files = [COMPOSE, DOCKERFILE, ENTRYPOINT, ROOT / "docs" / "deploy.md", *DEPLOY.rglob("*.yaml")]
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
    op, base = steps[0]
    assert op == "FROM" and re.fullmatch(r"python:3\.11\.\d+-slim-\w+", base), "a pinned base image"
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
