"""The README documents what the code declares: every config key and every exit code."""

from __future__ import annotations

import re
from pathlib import Path

from docshift.config import KEYS
from docshift.errors import ExitCode

README = (Path(__file__).resolve().parents[2] / "README.md").read_text(encoding="utf-8")


def test_every_config_key_is_in_the_readme_table() -> None:
    documented = set(re.findall(r"^\| `([a-z0-9_]+)` \|", README, flags=re.MULTILINE))
    assert {key.name for key in KEYS} == documented


def test_every_exit_code_is_in_the_readme_table() -> None:
    documented = {int(code) for code in re.findall(r"^\| (\d+) \|", README, flags=re.MULTILINE)}
    assert {int(code) for code in ExitCode} == documented


def test_readme_opens_with_the_two_commands() -> None:
    block = README.split("```sh", 1)[1].split("```", 1)[0]
    commands = [line.split("#")[0].strip() for line in block.strip().splitlines()]
    assert commands == ["make demo", "make test"]
