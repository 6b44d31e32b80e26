"""Settings from DEVCTL_* variables, and URLs that never show a password."""

from __future__ import annotations

import pytest

from devctl_dist.core.exceptions import UsageError
from devctl_dist.settings import Settings, load_settings, redact_url


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("redis://localhost:6379/0", "redis://localhost:6379/0"),
        ("redis://:s3cret@redis:6379/0", "redis://:***@redis:6379/0"),
        ("rediss://admin:s3cret@redis.example:6380/2", "rediss://admin:***@redis.example:6380/2"),
        ("redis://user@redis/0", "redis://user@redis/0"),
        ("redis://redis/0?password=s3cret&ssl=1", "redis://redis/0?password=***&ssl=1"),
    ],
)
def test_redact_url_hides_passwords(url: str, shown: str) -> None:
    assert redact_url(url) == shown


NASTY_PASSWORDS = ["s3c/ret", "a#b", "q?x=1", "p@ss", "c:o:l", "/#?@:", "x@h:1/y", "%2F@", "@", "a;b"]
SCHEMES = ["redis", "rediss", "amqp", "amqps", "sentinel", "sqla+postgresql", "redis+socket"]


@pytest.mark.parametrize("password", NASTY_PASSWORDS)
@pytest.mark.parametrize("scheme", SCHEMES)
def test_redact_url_hides_any_password_for_any_scheme(scheme: str, password: str) -> None:
    url = f"{scheme}://user:{password}@host.example:6379/0?ssl_cert_reqs=none"
    assert redact_url(url) == f"{scheme}://user:***@host.example:6379/0?ssl_cert_reqs=none"
    assert redact_url(f"{scheme}://:{password}@[::1]:5672//") == f"{scheme}://:***@[::1]:5672//"


def test_redact_url_handles_failover_lists_and_odd_inputs() -> None:
    failover = "sentinel://:p/w@s1:26379;sentinel://:p#w@s2:26379"
    assert redact_url(failover) == "sentinel://:***@s1:26379;sentinel://:***@s2:26379"
    assert redact_url("redis://:pw@h/0?x=a@b") == "redis://:***@b"  # ambiguous: hide more, never less
    assert redact_url("not a url") == "not a url"
    assert redact_url("user:secret@host") == "<unparsable url>"
    assert (
        redact_url("amqp://guest:guest@rabbit//?token=t0k#frag") == "amqp://guest:***@rabbit//?token=***#frag"
    )


def test_defaults() -> None:
    settings = Settings()
    assert settings.broker_url == "redis://localhost:6379/0"
    assert settings.result_backend_url == settings.broker_url
    assert settings.default_queue == "default"
    assert settings.visibility_timeout == 12 * 3600
    assert settings.hard_time_limit < settings.visibility_timeout
    assert settings.worker_ping_timeout == 3.0
    assert settings.kill_grace == 3.0


def test_environment_variables(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DEVCTL_BROKER_URL", "redis://redis:6379/1")
    monkeypatch.setenv("DEVCTL_RESULT_BACKEND", "redis://results:6379/2")
    monkeypatch.setenv("DEVCTL_QUEUE_RATE_LIMITS", '{"api": "10/s"}')
    monkeypatch.setenv("DEVCTL_VISIBILITY_TIMEOUT", "7200")
    settings = Settings()
    assert settings.broker_url == "redis://redis:6379/1"
    assert settings.result_backend_url == "redis://results:6379/2"
    assert settings.queue_rate_limits == {"api": "10/s"}
    assert settings.hard_time_limit == 6600


def test_hard_limit_must_stay_below_visibility_timeout() -> None:
    with pytest.raises(ValueError, match="must be below"):
        Settings(visibility_timeout=600, task_time_limit=600)


def test_load_settings_names_the_variable_and_hides_the_value(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DEVCTL_BROKER_URL", "redis://:s3cret@redis:6379/0")
    monkeypatch.setenv("DEVCTL_KILL_GRACE", "soon")
    with pytest.raises(UsageError) as caught:
        load_settings()
    message = str(caught.value)
    assert message.startswith("invalid settings: DEVCTL_KILL_GRACE: ")
    assert "s3cret" not in message
    assert "\n" not in message


def test_validation_errors_never_show_the_url() -> None:
    with pytest.raises(ValueError) as caught:
        Settings(broker_url="redis://:s3cret@redis:6379/0", visibility_timeout=600, task_time_limit=600)
    assert "s3cret" not in str(caught.value)


@pytest.mark.parametrize("url", ["amqp://guest:pw@127.0.0.1:5672//", "garbage", "http://h/"])
def test_a_broker_that_is_not_redis_is_one_line_exit_2(url: str) -> None:
    import subprocess
    import sys
    from pathlib import Path

    devctl = str(Path(sys.executable).with_name("devctl"))
    examples = Path(__file__).resolve().parents[1] / "examples" / "dag.yaml"
    proc = subprocess.run(
        [devctl, "run", str(examples), "--distributed", "--broker", url],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "must be a Redis URL" in lines[0], proc.stderr
    assert "pw" not in proc.stderr  # the password is never printed
