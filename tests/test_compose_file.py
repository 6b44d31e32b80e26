"""docker-compose.yml works as shipped: parsed, resolved by a real compose client, Redis run for real.

There is no Docker engine here. ``docker compose config`` (or ``docker-compose config``) needs
none: when a client is installed it resolves the file, and a missing password must stop it with
one clear line. The Redis command is run with the local ``redis-server`` to prove that the
password, ``maxmemory`` and ``noeviction`` really take effect.
"""

from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
import yaml

from devctl_dist.settings import Settings
from tests.deploy_helpers import COMPOSE, ROOT, compose, env_default, seconds

PASSWORD_REF = re.compile(r"\$\{REDIS_PASSWORD:\?[^}]+\}")
PINNED = re.compile(r"[\w./-]+:\d+\.\d+[\w.-]*")  # name:1.2... (a version, never `latest` or `7`)


def test_compose_has_the_services_and_builds_the_worker_image() -> None:
    services = compose()["services"]
    assert {"redis", "worker", "flower", "coordinator"} <= set(services)
    for name in ("worker", "flower", "coordinator"):
        assert services[name]["build"] == {"context": ".", "dockerfile": "workers/Dockerfile"}
    assert "version" not in compose()


def test_compose_images_are_pinned() -> None:
    for name, service in compose()["services"].items():
        assert PINNED.fullmatch(service["image"]), f"{name}: {service['image']}"


def test_compose_redis_requires_a_password_and_bounds_its_memory() -> None:
    redis_service = compose()["services"]["redis"]
    command = redis_service["command"][-1]
    assert redis_service["command"][:2] == ["sh", "-c"] and command.startswith("exec redis-server ")
    for option in ("--appendonly yes", "--maxmemory-policy noeviction", '--maxmemory "$$REDIS_MAXMEMORY"'):
        assert option in command
    assert '--requirepass "$$REDIS_PASSWORD"' in command
    env = redis_service["environment"]
    assert PASSWORD_REF.fullmatch(env["REDIS_PASSWORD"]) and PASSWORD_REF.fullmatch(env["REDISCLI_AUTH"])
    maxmemory_mb = int(env_default(env["REDIS_MAXMEMORY"]).removesuffix("mb"))
    assert maxmemory_mb * 2**20 < int(redis_service["mem_limit"].removesuffix("g")) * 2**30
    assert "redis-cli ping" in " ".join(redis_service["healthcheck"]["test"])
    assert any(v.endswith(":/data") for v in redis_service["volumes"])
    assert "ports" not in redis_service, "Redis stays on the compose network"


def test_compose_worker_scales_and_drains_longer_than_the_longest_step() -> None:
    worker = compose()["services"]["worker"]
    assert "container_name" not in worker and "ports" not in worker
    assert worker["depends_on"]["redis"]["condition"] == "service_healthy"
    broker = worker["environment"]["DEVCTL_BROKER_URL"]
    assert re.fullmatch(r"redis://:(.+)@redis:6379/0", broker) and PASSWORD_REF.search(broker)
    time_limit = int(env_default(worker["environment"]["DEVCTL_TASK_TIME_LIMIT"]))
    assert worker["stop_signal"] == "SIGTERM"
    assert seconds(env_default(worker["stop_grace_period"])) >= time_limit + 60
    assert "command" not in worker, "the entrypoint's default is the worker command"


def test_compose_flower_is_loopback_only_and_requires_auth() -> None:
    flower = compose()["services"]["flower"]
    assert flower["command"][:3] == ["flower", "--port", "5555"]
    assert flower["ports"], "Flower publishes its port"
    for port in flower["ports"]:
        host_ip = port["host_ip"] if isinstance(port, dict) else port.split(":")[0]
        assert host_ip == "127.0.0.1"
    assert re.fullmatch(r"\$\{FLOWER_BASIC_AUTH:\?[^}]+\}", flower["environment"]["FLOWER_BASIC_AUTH"])


def test_compose_coordinator_is_a_tool_with_read_only_examples() -> None:
    coordinator = compose()["services"]["coordinator"]
    assert coordinator["profiles"] == ["tools"]
    assert "./examples:/workspace/examples:ro" in coordinator["volumes"]
    assert coordinator["depends_on"]["redis"]["condition"] == "service_healthy"


def test_compose_settings_are_real_settings_that_agree() -> None:
    env = compose()["services"]["worker"]["environment"]
    entrypoint_vars = {"DEVCTL_QUEUES", "DEVCTL_CONCURRENCY"}
    values = {
        key.removeprefix("DEVCTL_").lower(): env_default(value)
        for key, value in env.items()
        if key not in entrypoint_vars
    }
    assert set(values) <= set(Settings.model_fields)
    Settings.model_validate(values)  # raises when task_time_limit >= visibility_timeout


# --- a real compose client, when one is installed ------------------------------------------


def compose_client() -> list[str] | None:
    """``docker compose`` (v2 plugin) or ``docker-compose``; None when neither works."""
    for candidate in (["docker", "compose"], ["docker-compose"]):
        if shutil.which(candidate[0]) is None:
            continue
        probe = subprocess.run([*candidate, "version"], capture_output=True, timeout=60)
        if probe.returncode == 0:
            return candidate
    return None


def compose_config(tmp_path: Path, **env: str) -> subprocess.CompletedProcess[str]:
    """``compose config`` with only ``env`` set (an empty --env-file: no developer's .env counts)."""
    client = compose_client()
    if client is None:
        if os.environ.get("CI") == "true":  # .ci/run installs one: a missing client is a broken CI
            pytest.fail("no compose client (`docker compose` or `docker-compose`) installed")
        pytest.skip("no compose client (`docker compose` or `docker-compose`) installed")
    empty = tmp_path / "empty.env"
    empty.write_text("")
    base = {k: v for k, v in os.environ.items() if not k.startswith(("REDIS_", "FLOWER_", "DEVCTL_"))}
    command = [*client, "--project-directory", str(ROOT), "-f", str(COMPOSE), "--env-file", str(empty)]
    return subprocess.run(
        [*command, "config"], capture_output=True, text=True, env=base | env, timeout=120, cwd=tmp_path
    )


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"FLOWER_BASIC_AUTH": "admin:pw"}, "set REDIS_PASSWORD (letters and digits) in the shell or .env"),
        ({"REDIS_PASSWORD": "pw"}, "set FLOWER_BASIC_AUTH=user:password in the shell or .env"),
    ],
)
def test_compose_refuses_to_start_without_credentials(
    tmp_path: Path, env: dict[str, str], message: str
) -> None:
    result = compose_config(tmp_path, **env)
    assert result.returncode != 0
    assert "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert result.stderr.strip().endswith(message), result.stderr


def test_compose_config_resolves_with_credentials(tmp_path: Path) -> None:
    result = compose_config(tmp_path, REDIS_PASSWORD="s3cr3t", FLOWER_BASIC_AUTH="admin:pw")
    assert result.returncode == 0, result.stderr
    services = yaml.safe_load(result.stdout)["services"]
    assert services["worker"]["environment"]["DEVCTL_BROKER_URL"] == "redis://:s3cr3t@redis:6379/0"
    assert services["redis"]["environment"]["REDIS_PASSWORD"] == "s3cr3t"
    assert services["flower"]["environment"]["FLOWER_BASIC_AUTH"] == "admin:pw"
    grace = services["worker"]["stop_grace_period"]
    assert (seconds(grace) if isinstance(grace, str) else int(grace) // 10**9) >= 3660


# --- the Redis command, run for real -------------------------------------------------------


@pytest.fixture
def compose_redis(tmp_path: Path) -> Iterator[int]:
    """compose's Redis command (``$$`` unescaped) on a free loopback port, with compose's environment."""
    if shutil.which("redis-server") is None:
        pytest.skip("redis-server is not installed")
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = int(sock.getsockname()[1])
    shell, flag, command = compose()["services"]["redis"]["command"]
    command = command.replace("$$", "$") + f" --port {port} --bind 127.0.0.1 --dir {tmp_path}"
    env = {"PATH": os.environ["PATH"], "REDIS_PASSWORD": "s3cr3t", "REDIS_MAXMEMORY": "64mb"}
    server = subprocess.Popen([shell, flag, command], env=env, stdout=subprocess.DEVNULL)
    try:
        yield port
    finally:
        server.terminate()
        server.wait(timeout=30)


def test_compose_redis_command_applies_password_maxmemory_and_noeviction(compose_redis: int) -> None:
    client = redis.Redis(port=compose_redis, password="s3cr3t", socket_timeout=5)
    deadline = time.monotonic() + 20
    while True:
        try:
            client.ping()
            break
        except redis.ConnectionError:
            assert time.monotonic() < deadline, "compose's redis command did not start"
            time.sleep(0.1)
    assert client.config_get("maxmemory") == {"maxmemory": str(64 * 2**20)}
    assert client.config_get("maxmemory-policy") == {"maxmemory-policy": "noeviction"}
    assert client.config_get("appendonly") == {"appendonly": "yes"}
    with pytest.raises(redis.AuthenticationError):
        redis.Redis(port=compose_redis, socket_timeout=5).ping()
