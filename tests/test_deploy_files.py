"""The deployment files (compose, Kubernetes manifests, worker image) hold together.

There is no Docker engine or cluster here: every YAML file is parsed, the facts that
make scaling, signals and security work are asserted, the entrypoint runs for real
against a stand-in ``devctl``, and ``kubectl kustomize`` builds the manifests when
kubectl is installed.
"""

from __future__ import annotations

import base64
import itertools
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from devctl_dist.settings import Settings
from devctl_dist.workflows.schema import WorkflowSchema

ROOT = Path(__file__).resolve().parents[1]
DEPLOY = ROOT / "deploy"
COMPOSE = ROOT / "docker-compose.yml"
DOCKERFILE = ROOT / "workers" / "Dockerfile"
ENTRYPOINT = ROOT / "workers" / "entrypoint.sh"
PLACEHOLDER = "CHANGE_ME"
NOT_IN_KUSTOMIZATION = {"secret.example.yaml", "coordinator-job.yaml", "kustomization.yaml"}
CLUSTER_SCOPED = {"Namespace"}
CONTAINER_KEYS = {
    "name", "image", "imagePullPolicy", "args", "command", "env", "envFrom", "ports", "resources",
    "readinessProbe", "livenessProbe", "startupProbe", "securityContext", "volumeMounts",
}  # fmt: skip


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


# --- workers/entrypoint.sh, run for real --------------------------------------------


@pytest.mark.parametrize("shell", ["sh", "bash", "dash"])
def test_entrypoint_parses(shell: str) -> None:
    if shutil.which(shell) is None:
        pytest.skip(f"{shell} not installed")
    subprocess.run([shell, "-n", str(ENTRYPOINT)], check=True, timeout=30)
    text = ENTRYPOINT.read_text()
    assert text.startswith("#!/bin/sh\n") and "\nset -eu\n" in text
    assert os.access(ENTRYPOINT, os.X_OK)


STUB = """#!/bin/sh
trap 'echo SIGTERM >> "$STUB_OUT"; exit 0' TERM
printf '%s\\n' "$$" "$@" > "$STUB_OUT.tmp" && mv "$STUB_OUT.tmp" "$STUB_OUT"
while :; do sleep 0.05; done
"""


@pytest.fixture
def stub_env(tmp_path: Path) -> dict[str, str]:
    """PATH with a stand-in `devctl` that records its pid and argv, then waits for SIGTERM."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "devctl").write_text(STUB)
    (bin_dir / "devctl").chmod(0o755)
    return {"PATH": f"{bin_dir}:/usr/bin:/bin", "STUB_OUT": str(tmp_path / "argv")}


def run_entrypoint(env: dict[str, str], *args: str) -> list[str]:
    """Start the entrypoint, wait for devctl to start, SIGTERM it; return pid check + argv."""
    proc = subprocess.Popen([str(ENTRYPOINT), *args], env=env)
    out = Path(env["STUB_OUT"])
    try:
        deadline = time.monotonic() + 30
        while not out.exists():
            assert proc.poll() is None, f"entrypoint exited with {proc.returncode}"
            assert time.monotonic() < deadline, "devctl never started"
            time.sleep(0.02)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0
    finally:
        proc.kill()
    pid, *argv, last = out.read_text().splitlines()
    assert int(pid) == proc.pid, "exec: devctl replaced the shell, so it gets the signals"
    assert last == "SIGTERM"
    return argv


WORKER_DEFAULT = ["worker", "--queues", "default", "--concurrency", "2"]
FLOWER_AUTH = "admin:" + PLACEHOLDER
ENTRYPOINT_CASES = [
    ({}, [], WORKER_DEFAULT),
    ({}, ["--loglevel", "debug"], [*WORKER_DEFAULT, "--loglevel", "debug"]),
    (
        {"DEVCTL_QUEUES": "gpu,default", "DEVCTL_CONCURRENCY": "8"},
        [],
        ["worker", "--queues", "gpu,default", "--concurrency", "8"],
    ),
    ({}, ["worker", "--queues", "gpu"], ["worker", "--queues", "gpu"]),
    ({}, ["run", "examples/dag.yaml", "--distributed"], ["run", "examples/dag.yaml", "--distributed"]),
    ({"FLOWER_BASIC_AUTH": FLOWER_AUTH}, ["flower"], ["flower", "--basic-auth", FLOWER_AUTH]),
    ({}, ["flower", f"--basic-auth={FLOWER_AUTH}"], ["flower", f"--basic-auth={FLOWER_AUTH}"]),
]


@pytest.mark.parametrize(("extra_env", "args", "expected"), ENTRYPOINT_CASES)
def test_entrypoint_execs_devctl(
    stub_env: dict[str, str], extra_env: dict[str, str], args: list[str], expected: list[str]
) -> None:
    assert run_entrypoint({**stub_env, **extra_env}, *args) == expected


def test_entrypoint_refuses_flower_without_auth(stub_env: dict[str, str]) -> None:
    done = subprocess.run(
        [str(ENTRYPOINT), "flower"], env=stub_env, capture_output=True, text=True, timeout=30
    )
    assert done.returncode == 64
    assert "FLOWER_BASIC_AUTH" in done.stderr
    assert not Path(stub_env["STUB_OUT"]).exists()


def test_entrypoint_runs_other_programs(stub_env: dict[str, str]) -> None:
    done = subprocess.run(
        [str(ENTRYPOINT), "sh", "-c", "echo from-sh"],
        env=stub_env,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert done.returncode == 0 and done.stdout == "from-sh\n"


# --- the image's commands for real: entrypoint, devctl worker/flower, the probe ----


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def wait_for(ready: Callable[[], bool], proc: subprocess.Popen[bytes], what: str) -> None:
    deadline = time.monotonic() + 120
    while not ready():
        assert proc.poll() is None, f"{what}: exited with {proc.returncode}"
        assert time.monotonic() < deadline, f"{what}: not ready after 120 s"
        time.sleep(0.1)


def accepts(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
        return True
    except OSError:
        return False


@pytest.fixture
def image_env(tmp_path: Path) -> Iterator[dict[str, str]]:
    """The image's environment: a throwaway redis-server (no stolen steps) and devctl on PATH."""
    binary = shutil.which("redis-server")
    if binary is None:
        if os.environ.get("CI") == "true":
            pytest.fail("redis-server is not installed")
        pytest.skip("redis-server is not installed: these tests need a real Redis")
    port = free_port()
    args = [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]
    server = subprocess.Popen([*args, "--dir", str(tmp_path)], stdout=subprocess.DEVNULL)
    try:
        wait_for(lambda: accepts(port), server, "redis-server")
        env = {k: v for k, v in os.environ.items() if not k.startswith(("DEVCTL_", "FLOWER_"))}
        env["PATH"] = f"{Path(sys.executable).parent}:{env['PATH']}"
        yield env | {"DEVCTL_BROKER_URL": f"redis://127.0.0.1:{port}/0"}
    finally:
        server.terminate()
        server.wait(timeout=30)


@pytest.mark.distributed
def test_worker_runs_answers_the_manifest_probe_and_drains(image_env: dict[str, str], tmp_path: Path) -> None:
    """Entrypoint -> real `devctl worker`, the manifest's probe, then SIGTERM -> warm shutdown."""
    log = tmp_path / "worker.log"
    with log.open("wb") as out:
        worker = subprocess.Popen(
            [str(ENTRYPOINT)], env=image_env, stdout=out, stderr=out, start_new_session=True
        )
    try:
        wait_for(lambda: b" ready." in log.read_bytes(), worker, "devctl worker")
        assert f"devctl-{worker.pid}@".encode() in log.read_bytes(), "exec: the worker kept the shell's pid"
        probe = pod_spec(find("Deployment", "devctl-worker"))["containers"][0]["livenessProbe"]["exec"][
            "command"
        ]
        host = socket.gethostname()  # the kubelet runs the probe with the pod's HOSTNAME
        this = subprocess.Popen(probe, env={**image_env, "HOSTNAME": host})
        other = subprocess.Popen(probe, env={**image_env, "HOSTNAME": f"not-{host}"})
        assert this.wait(timeout=120) == 0, "the probe finds this worker"
        assert other.wait(timeout=120) != 0, "the probe fails for a worker that did not reply"
        worker.send_signal(signal.SIGTERM)
        assert worker.wait(timeout=120) == 0
        assert b"Warm shutdown" in log.read_bytes()
    finally:
        if worker.poll() is None:
            os.killpg(worker.pid, signal.SIGKILL)
            worker.wait(timeout=30)


def http_status(url: str, auth: str | None = None) -> int:
    request = urllib.request.Request(url)
    if auth:
        request.add_header("Authorization", "Basic " + base64.b64encode(auth.encode()).decode())
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            status: int = response.status
            return status
    except urllib.error.HTTPError as error:
        return error.code


@pytest.mark.distributed
def test_flower_from_the_image_requires_basic_auth(image_env: dict[str, str]) -> None:
    """The entrypoint's `flower` asks for the FLOWER_BASIC_AUTH credentials; /healthcheck does not."""
    port = free_port()
    env = image_env | {"FLOWER_BASIC_AUTH": FLOWER_AUTH}
    command = [str(ENTRYPOINT), "flower", "--port", str(port)]
    flower = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    base = f"http://127.0.0.1:{port}"
    try:
        wait_for(lambda: accepts(port), flower, "devctl flower")
        assert http_status(f"{base}/healthcheck") == 200, "the health check skips auth"
        assert http_status(f"{base}/api/workers") == 401
        assert http_status(f"{base}/api/workers", FLOWER_AUTH) == 200
        assert http_status(f"{base}/api/workers", "admin:wrong") == 401
    finally:
        flower.terminate()
        flower.wait(timeout=60)
