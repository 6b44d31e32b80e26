"""devctl command plugins: discovery, name splitting, exit codes, the plugin host.

Plugins under test are real entry points: a throw-away distribution written to
a temporary directory and put on PYTHONPATH of a real ``plugin_host`` process.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from devctl_dist.core.exceptions import CommandNotFoundError
from devctl_dist.runners import builtin
from devctl_dist.runners.commands import (
    available_commands,
    call_plugin,
    exit_code_of,
    resolve_command,
    split_command,
)

PLUGIN_MODULE = """
import sys

def sync(params):
    print("sync", params.get("app"), params.get("args", []))
    return 0

def boom(params):
    raise RuntimeError("cluster unreachable\\nsecond line")

def code(params):
    print("to stderr", file=sys.stderr)
    return int(params["code"])
"""

ENTRY_POINTS = """[devctl.commands]
argocd.apps.sync = fakeplugins:sync
boom = fakeplugins:boom
code = fakeplugins:code
"""


@pytest.fixture
def plugin_path(tmp_path: Path) -> Path:
    """A directory holding an installed-looking distribution with three plugins."""
    (tmp_path / "fakeplugins.py").write_text(PLUGIN_MODULE)
    info = tmp_path / "fakeplugins-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: fakeplugins\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text(ENTRY_POINTS)
    return tmp_path


def host(*args: str, path: Path | None = None, debug: bool = False) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ)
    if path is not None:
        env["PYTHONPATH"] = str(path)
    env.pop("DEVCTL_DEBUG", None)
    if debug:
        env["DEVCTL_DEBUG"] = "1"
    command = [sys.executable, "-m", "devctl_dist.runners.plugin_host", *args]
    return subprocess.run(command, capture_output=True, text=True, env=env, timeout=60)


def test_echo_is_registered_and_resolves_to_the_builtin() -> None:
    assert "echo" in available_commands()
    assert resolve_command("echo") is builtin.echo


def test_unknown_command_raises_with_its_name() -> None:
    with pytest.raises(CommandNotFoundError) as caught:
        resolve_command("no such thing")
    assert caught.value.command == "no such thing"


def test_split_command_uses_the_longest_registered_prefix() -> None:
    assert split_command("echo") == ("echo", [])
    assert split_command("echo hello world") == ("echo", ["hello", "world"])
    assert split_command("argocd apps sync") == ("argocd.apps.sync", [])


@pytest.mark.parametrize(
    ("value", "code"), [(None, 0), (0, 0), (3, 3), (True, 0), (False, 1), (256, 1), (-1, 255), ("x", 0)]
)
def test_exit_code_of(value: object, code: int) -> None:
    assert exit_code_of(value) == code


def test_call_plugin_maps_exceptions_to_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    def failing(params: dict[str, Any]) -> int:
        raise ValueError("bad value\nmore detail")

    assert call_plugin("demo", failing, {}) == 1
    assert capsys.readouterr().err == "devctl: demo: ValueError: bad value\n"


def test_call_plugin_honours_system_exit(capsys: pytest.CaptureFixture[str]) -> None:
    def exiting(params: dict[str, Any]) -> None:
        raise SystemExit(4)

    assert call_plugin("demo", exiting, {}) == 4


def test_host_runs_echo() -> None:
    done = host("echo", '{"message": "hello plugin"}')
    assert (done.returncode, done.stdout) == (0, "hello plugin\n")
    done = host("echo hello world")
    assert (done.returncode, done.stdout) == (0, "hello world\n")
    done = host("echo", '{"a": 1, "b": "x"}')
    assert done.stdout == "a=1 b=x\n"


def test_host_unknown_command_exits_127() -> None:
    done = host("nope", "{}")
    assert done.returncode == 127
    assert done.stderr == "devctl: unknown command 'nope'\n"


def test_host_rejects_bad_params() -> None:
    assert host("echo", "{not json").returncode == 2
    assert host("echo", "[1, 2]").returncode == 2


def test_host_finds_installed_plugins_by_dotted_name(plugin_path: Path) -> None:
    done = host("argocd apps sync", '{"app": "api"}', path=plugin_path)
    assert (done.returncode, done.stdout) == (0, "sync api []\n")
    done = host("argocd apps sync extra", "{}", path=plugin_path)
    assert done.stdout == "sync None ['extra']\n"


def test_host_plugin_exit_code_and_exception(plugin_path: Path) -> None:
    done = host("code", '{"code": 7}', path=plugin_path)
    assert (done.returncode, done.stderr) == (7, "to stderr\n")
    done = host("boom", "{}", path=plugin_path)
    assert done.returncode == 1
    assert done.stderr == "devctl: boom: RuntimeError: cluster unreachable\n"


def test_host_debug_prints_traceback(plugin_path: Path) -> None:
    done = host("boom", "{}", path=plugin_path, debug=True)
    assert done.returncode == 1
    assert "Traceback (most recent call last)" in done.stderr
    assert "second line" in done.stderr
