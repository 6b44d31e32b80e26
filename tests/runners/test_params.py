"""format_params / shell_command: quoting proved by running the result through /bin/sh."""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

import pytest

from devctl_dist.runners.params import format_params, shell_command


def sh_args(params: dict[str, Any]) -> list[str]:
    """The argv /bin/sh builds from the formatted params (one line per argument)."""
    script = shell_command("printf '%s\\n'", params)
    result = subprocess.run(["/bin/sh", "-c", script], capture_output=True, text=True, check=True)
    return result.stdout.splitlines()


def test_scalars_become_key_value_pairs() -> None:
    assert format_params({"app": "api", "replicas": 3, "ratio": 0.5}) == " --app api --replicas 3 --ratio 0.5"


def test_true_is_a_bare_flag_false_and_none_are_omitted() -> None:
    assert format_params({"force": True, "dry-run": False, "tag": None}) == " --force"


def test_list_repeats_the_flag() -> None:
    assert sh_args({"tag": ["a b", "c"]}) == ["--tag", "a b", "--tag", "c"]


def test_dict_becomes_one_json_argument() -> None:
    assert sh_args({"labels": {"tier": "web", "n": 1}}) == ["--labels", '{"tier": "web", "n": 1}']


def test_empty_params_add_nothing() -> None:
    assert shell_command("!true", {}) == "!true"


def test_hostile_values_stay_literal(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    hostile = f"x; touch {marker} $(touch {marker}) `touch {marker}` 'q\" \n*"
    assert sh_args({"msg": hostile})[0] == "--msg"
    assert not marker.exists()
    script = shell_command("printf '%s'", {"msg": hostile})
    out = subprocess.run(["/bin/sh", "-c", script], capture_output=True, text=True, check=True).stdout
    assert out == f"--msg{hostile}"


@pytest.mark.parametrize("key", ["a b", "x;rm", "$(id)", "", "k=v", "ü"])
def test_unsafe_keys_are_rejected(key: str) -> None:
    with pytest.raises(ValueError, match="invalid parameter name"):
        format_params({key: "v"})


def test_allowed_key_characters() -> None:
    assert format_params({"a.b_c-1": "v"}) == " --a.b_c-1 v"
