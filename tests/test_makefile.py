"""Tests for the Makefile's interface: help as the default goal, one line per target."""

from __future__ import annotations

import re
import subprocess

from tests.helpers import REPO_ROOT


def make(*args: str) -> str:
    completed = subprocess.run(
        ["make", "--no-print-directory", *args],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        check=True,
    )
    return completed.stdout


def phony_targets() -> list[str]:
    text = (REPO_ROOT / "Makefile").read_text()
    targets: list[str] = []
    for line in re.findall(r"^\.PHONY:(.*)$", text, flags=re.MULTILINE):
        targets += line.split()
    return targets


def test_make_default_goal_is_help():
    assert make() == make("help")


def test_make_help_lists_every_target_once():
    output = re.sub(r"\x1b\[[0-9;]*m", "", make("help"))
    listed = re.findall(r"^  (\S+)\s+\S", output, flags=re.MULTILINE)

    assert sorted(listed) == sorted(phony_targets())
    assert len(listed) == len(set(listed))


def test_readme_starts_with_the_two_commands():
    readme = (REPO_ROOT / "README.md").read_text()
    first_block = re.search(r"```sh\n(.*?)```", readme, flags=re.DOTALL).group(1)
    commands = [line.split("#")[0].strip() for line in first_block.splitlines()]

    assert commands == ["make demo", "make test"]
