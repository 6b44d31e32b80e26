"""CLI conventions (issue 10): validate as a CI gate, typed --var, exit codes, pipes, signals.

Through the real ``devctl`` executable wherever the claim is about the process:
its exit status, what reaches stderr, what a closed pipe or a signal does to it.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import yaml
from click.testing import CliRunner

from devctl_dist.cli import cli
from devctl_dist.cli_support import expand_paths, typed_value
from tests.distributed.cluster import SESSION, RedisServer, WorkerFactory
from tests.evidence import pid_alive, wait_for_pids, wait_gone

DEVCTL = str(Path(sys.executable).with_name("devctl"))


def write(path: Path, data: dict[str, Any] | str) -> Path:
    path.write_text(data if isinstance(data, str) else yaml.safe_dump(data, sort_keys=False))
    return path


def devctl(
    *args: str, env: dict[str, str] | None = None, timeout: float = 120
) -> subprocess.CompletedProcess[str]:
    merged = {**os.environ, **(env or {})}
    return subprocess.run([DEVCTL, *args], capture_output=True, text=True, timeout=timeout, env=merged)


def one_error_line(proc: subprocess.CompletedProcess[str], code: int = 2) -> str:
    assert proc.returncode == code, (proc.returncode, proc.stdout, proc.stderr)
    lines = proc.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("devctl: error: "), proc.stderr
    return lines[0]


# ---------------------------------------------------------------- validate as a CI gate


def test_validate_checks_every_file_and_glob_with_one_line_each(tmp_path: Path) -> None:
    good = write(tmp_path / "good.yaml", {"steps": [{"name": "a", "command": "!true"}]})
    typo = write(tmp_path / "typo.yaml", "steps:\n  - name: a\n    command: '!echo {{ verison }}'\n")
    sub = tmp_path / "more"
    sub.mkdir()
    nested = write(sub / "nested.yaml", {"steps": [{"name": "b", "command": "!true"}]})
    proc = devctl("validate", str(good), str(typo), f"{tmp_path}/more/*.yaml", f"{tmp_path}/none-*.yaml")
    assert proc.returncode == 2
    assert proc.stdout.splitlines() == [
        f"OK: {good}: 1 steps (sequential)",
        f"OK: {nested}: 1 steps (sequential)",
    ]
    assert proc.stderr.splitlines() == [
        f"devctl: error: {typo}:2: step 'a': undefined variable 'verison'",
        f"devctl: error: {tmp_path}/none-*.yaml: no file matches",
    ]
    assert devctl("validate", str(good), f"{tmp_path}/**/*.yaml").returncode == 2  # typo.yaml again
    assert devctl("validate", str(good), str(nested)).returncode == 0


def test_validate_knows_the_vars_a_run_will_get(tmp_path: Path) -> None:
    path = write(tmp_path / "wf.yaml", {"steps": [{"name": "a", "command": "!echo {{ version }}"}]})
    assert "undefined variable 'version'" in one_error_line(devctl("validate", str(path)))
    proc = devctl("validate", str(path), "--var", "version=1.2")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == f"OK: {path}: 1 steps (sequential)\n"


def test_validate_lists_unknown_commands_as_warnings_and_results_errors_with_their_line(
    tmp_path: Path,
) -> None:
    data = {
        "steps": [
            {"name": "sync", "command": "argocd apps sync"},
            {"name": "a", "command": "!true"},
            {"name": "b", "command": "!echo {{ results['a'] }}", "depends_on": ["sync"]},
        ]
    }
    path = write(tmp_path / "wf.yaml", data)
    line = one_error_line(devctl("validate", str(path)))
    assert (
        line == f"devctl: error: {path}:6: step 'b': results['a'] is not available (not a dependency of 'b')"
    )
    data["steps"][2]["depends_on"] = ["sync", "a"]
    proc = devctl("validate", str(write(path, data)))
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines()[1].startswith(f"warning: {path}: step 'sync': unknown devctl command")


def test_quoted_globs_expand_sorted_and_an_existing_name_is_taken_literally(tmp_path: Path) -> None:
    for name in ("b.yaml", "a.yaml", "[x].yaml"):
        (tmp_path / name).write_text("")
    assert expand_paths([f"{tmp_path}/*.yaml"]) == [
        (f"{tmp_path}/[x].yaml", True),
        (f"{tmp_path}/a.yaml", True),
        (f"{tmp_path}/b.yaml", True),
    ]
    assert expand_paths([f"{tmp_path}/[x].yaml"]) == [(f"{tmp_path}/[x].yaml", True)]
    assert expand_paths(["plain.yaml", f"{tmp_path}/*.yml"]) == [
        ("plain.yaml", True),
        (f"{tmp_path}/*.yml", False),
    ]


CYCLE = "steps:\n" + "".join(
    f"  - name: {name}\n    command: '!true'\n    depends_on: [{dep}]\n"
    for name, dep in (("a", "c"), ("b", "a"), ("c", "b"))
)
GRAPH_ERRORS = {
    "cycle": CYCLE,
    "missing": "steps:\n  - name: a\n    command: '!true'\n"
    "  - name: b\n    command: '!true'\n    depends_on: [x]\n",
    "duplicate": "steps:\n  - name: a\n    command: '!true'\n  - name: a\n    command: '!true'\n",
}


@pytest.mark.parametrize("case", sorted(GRAPH_ERRORS))
def test_graph_and_run_report_graph_errors_exactly_like_validate(tmp_path: Path, case: str) -> None:
    path = write(tmp_path / "wf.yaml", GRAPH_ERRORS[case])
    line = one_error_line(devctl("validate", str(path)))
    assert line.startswith(f"devctl: error: {path}:")
    for command in (["graph"], ["run", "--dry-run"], ["run"]):
        assert one_error_line(devctl(*command, str(path))) == line


# ---------------------------------------------------------------- typed --var


@pytest.mark.parametrize(
    ("text", "value"),
    [
        ("10", 10),
        ("-3", -3),
        ("+4", 4),
        ("1.5", 1.5),
        ("true", True),
        ("False", False),
        ("'10'", "10"),
        ('"true"', "true"),
        ("prod", "prod"),
        ("", ""),
        ("1.10", "1.10"),  # a version keeps its spelling
        ("007", "007"),
        ("1e3", "1e3"),
        ("yes", "yes"),
        ("null", "null"),
        ("[1, 2]", "[1, 2]"),  # a list or a mapping stays a string
        ("a: b", "a: b"),
        ("fix #12", "fix #12"),  # YAML would drop the comment
        ("[unclosed", "[unclosed"),
    ],
)
def test_var_values_are_typed_like_yaml_scalars(text: str, value: object) -> None:
    typed = typed_value(text)
    assert typed == value and type(typed) is type(value)


def test_a_typed_var_makes_a_numeric_condition_work(tmp_path: Path) -> None:
    data = {
        "steps": [
            {"name": "big", "command": f"!touch {tmp_path}/big", "condition": "n > 5"},
            {"name": "flag", "command": f"!touch {tmp_path}/flag", "condition": "flag"},
            {"name": "text", "command": f"!echo -n {{{{ v + v }}}} > {tmp_path}/text"},
        ]
    }
    path = write(tmp_path / "wf.yaml", data)
    proc = devctl("run", str(path), "--var", "n=10", "--var", "flag=false", "--var", "v='10'")
    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / "big").exists() and not (tmp_path / "flag").exists()
    assert (tmp_path / "text").read_text() == "1010"  # the quoted value is a string
    os.remove(tmp_path / "big")
    proc = devctl("run", str(path), "--var", "n=3", "--var", "flag=true", "--var", "v=10")
    assert proc.returncode == 0, proc.stderr
    assert not (tmp_path / "big").exists()  # 3 > 5 compared as numbers ("3" > "5" would be a type error)
    assert (tmp_path / "flag").exists()
    assert (tmp_path / "text").read_text() == "20"


# ---------------------------------------------------------------- usage errors and pipes


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["run", "--bogus", "x.yaml"], "devctl: error: no such option '--bogus' (see 'devctl run --help')"),
        (["run"], "devctl: error: missing argument 'FILE' (see 'devctl run --help')"),
        (["validate"], "devctl: error: missing argument 'FILE...' (see 'devctl validate --help')"),
        (["nosuch"], "devctl: error: no such command 'nosuch' (see 'devctl --help')"),
        (["run", "x.yaml", "--max-concurrent", "0"], None),
        (["graph", "x.yaml", "--format", "png"], None),
    ],
)
def test_click_usage_errors_are_one_line_and_exit_2(args: list[str], expected: str | None) -> None:
    line = one_error_line(devctl(*args))
    if expected is not None:
        assert line == expected
    assert "Usage:" not in line


def _piped_to_head(*args: str) -> tuple[int, str]:
    """Run ``devctl ARGS | head -1`` in a shell; devctl's exit status and its stderr."""
    script = f'"{DEVCTL}" "$@" 2>"$ERR" | head -1 >/dev/null; exit "${{PIPESTATUS[0]}}"'
    err = Path(os.environ.get("TMPDIR", "/tmp")) / f"devctl-head-{os.getpid()}-{time.monotonic_ns()}"
    try:
        proc = subprocess.run(
            ["bash", "-c", script, "bash", *args], env={**os.environ, "ERR": str(err)}, timeout=120
        )
        return proc.returncode, err.read_text()
    finally:
        err.unlink(missing_ok=True)


def test_every_command_piped_into_head_ends_quietly(tmp_path: Path) -> None:
    steps = [{"name": f"s{i}", "command": f"!seq 1 20000; touch {tmp_path}/ran-{i}"} for i in range(3)]
    steps.append({"name": "fails", "command": "!seq 1 20000; exit 4", "on_failure": "continue"})
    path = write(tmp_path / "wf.yaml", {"steps": steps})
    many = write(
        tmp_path / "many.yaml", {"steps": [{"name": f"n{i}", "command": "!true"} for i in range(3000)]}
    )
    for args in (
        ["run", str(path)],
        ["run", str(path), "-o", "json"],
        ["run", str(many), "--dry-run"],
        ["graph", str(many)],
        ["validate", str(path), str(many)],
        ["--help"],
    ):
        code, stderr = _piped_to_head(*args)
        assert code == 0, (args, code, stderr)
        assert stderr == "", (args, stderr)  # no BrokenPipeError, no "Exception ignored"
    assert sorted(p.name for p in tmp_path.glob("ran-*")) == ["ran-0", "ran-1", "ran-2"]  # the run went on


# ---------------------------------------------------------------- exit codes of signals and infrastructure


@pytest.mark.parametrize(("signum", "code"), [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_a_signal_ends_the_run_with_128_plus_its_number(tmp_path: Path, signum: int, code: int) -> None:
    data = {
        "steps": [
            {"name": "sleeper", "command": f"!echo $$ > {tmp_path}/pid; exec sleep 60"},
            {"name": "never", "command": f"!touch {tmp_path}/never"},
        ]
    }
    path = write(tmp_path / "wf.yaml", data)
    proc = subprocess.Popen(
        [DEVCTL, "run", str(path), "-o", "plain"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    try:
        (pid,) = wait_for_pids(tmp_path / "pid", 1)
        proc.send_signal(signum)
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == code, (out, err)
    assert "Traceback" not in err
    assert wait_gone([pid], 10) == [], f"step process {pid} survived"
    assert not pid_alive(pid) and not (tmp_path / "never").exists()


@pytest.mark.distributed
def test_losing_the_broker_mid_run_exits_3(worker_factory: WorkerFactory, tmp_path: Path) -> None:
    """Redis restarts (no persistence) while one step runs and one waits in the queue: the queued one
    is lost with it. That is the infrastructure's fault, so exit 3 (CI retries), not 1."""
    binary = shutil.which("redis-server")
    if binary is None:
        pytest.skip("needs the redis-server binary to restart a private Redis")
    server = RedisServer.start(binary)
    try:
        url, queue = server.url(0), f"t{SESSION}-cli-lost"
        worker_factory(queues=[queue], concurrency=1, label="cli-lost", broker_url=url)
        steps = [{"name": n, "command": f"!echo $$ > {tmp_path}/pid-{n}; sleep 4"} for n in ("a", "b")]
        path = write(
            tmp_path / "wf.yaml", {"steps": [{"parallel": {"on_failure": "continue", "steps": steps}}]}
        )
        env = {"DEVCTL_BROKER_URL": url, "DEVCTL_DEFAULT_QUEUE": queue, "DEVCTL_RECONCILE_INTERVAL": "1"}
        proc = subprocess.Popen(
            [DEVCTL, "run", str(path), "--distributed", "-o", "plain"],
            env={**os.environ, **env},
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        try:
            running = _first_to_start(tmp_path, ("a", "b"))  # one pool process: the other waits in the queue
            time.sleep(0.5)
            server.crash_and_restart(binary)
            out, err = proc.communicate(timeout=120)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.communicate()
    finally:
        server.stop()
    queued = "b" if running == "a" else "a"
    assert proc.returncode == 3, (out, err)
    assert err.splitlines()[-1] == (
        f"devctl: error: broker {url} restarted during the run and lost 1 step(s) ('{queued}'): "
        "run again; run Redis with appendonly yes"
    ), err
    assert f"OK {running}" in out and not (tmp_path / f"pid-{queued}").exists()


def _first_to_start(tmp_path: Path, names: tuple[str, ...], timeout: float = 60) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        started = [n for n in names if (tmp_path / f"pid-{n}").exists()]
        if started:
            return started[0]
        time.sleep(0.05)
    raise AssertionError(f"no step started within {timeout}s")


def test_force_without_resume_is_a_usage_error(tmp_path: Path) -> None:
    example = Path(__file__).resolve().parents[1] / "examples" / "dag.yaml"
    proc = subprocess.run(
        [DEVCTL, "run", str(example), "--force"], capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 2
    assert proc.stderr.strip() == "devctl: error: --force only applies with --resume"


# ---------------------------------------------------------------- a command that starts nothing ends at once


def test_check_commands_skip_teardown_but_lose_no_output(tmp_path: Path) -> None:
    """validate, graph and run --dry-run end with os._exit: every line still arrives, codes hold."""
    steps = [
        {"name": f"s{i}", "command": "!true", "depends_on": [f"s{i - 1}"] if i else []} for i in range(3000)
    ]
    good = write(tmp_path / "good.yaml", {"steps": steps})
    bad = write(tmp_path / "bad.yaml", "steps: []\n")
    for args in (["run", "--dry-run", str(good)], ["graph", str(good)], ["validate", str(good), str(bad)]):
        expected = CliRunner().invoke(cli, args)  # in-process: the ordinary exit path
        proc = devctl(*args)
        assert (proc.returncode, proc.stdout) == (expected.exit_code, expected.stdout), args
        assert proc.stderr == expected.stderr, args
    assert proc.returncode == 2 and "steps must not be empty" in proc.stderr


def test_atexit_handlers_still_run_after_a_quick_exit(tmp_path: Path) -> None:
    good = write(tmp_path / "good.yaml", {"steps": [{"name": "a", "command": "!true"}]})
    code = (
        "import atexit, sys\n"
        "atexit.register(lambda: print('atexit ran', file=sys.stderr))\n"
        "from devctl_dist.cli import main\n"
        f"sys.argv = ['devctl', 'validate', {str(good)!r}]\n"
        "main()\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0 and proc.stdout.startswith("OK: ")
    assert proc.stderr == "atexit ran\n"
