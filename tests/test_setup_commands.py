"""The README's two set-up commands are what CI runs: command 2 step by step is ``.ci/run``."""

from __future__ import annotations

import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def setup_commands() -> list[str]:
    """The commands of the README's "Set up" code block (comment lines dropped)."""
    text = (REPO / "README.md").read_text(encoding="utf-8")
    block = re.search(r"## Set up.*?```(?:bash|sh)?\n(.*?)```", text, re.S)
    assert block, "README has no 'Set up' code block"
    return [line.strip() for line in block.group(1).splitlines() if line.strip() and not line.lstrip().startswith("#")]


def normalise(step: str) -> str:
    """A step without the flags CI adds for a quiet, clean, fixed-size run."""
    step = re.sub(r"\s+-q\b", "", step)
    step = step.replace(" --clear", "").replace(' -s "-screen 0 1280x1024x24"', "")
    return " ".join(step.split())


def test_two_setup_commands_in_fresh_venvs():
    commands = setup_commands()
    assert len(commands) == 2
    for command in commands:
        assert command.startswith("python3 -m venv .venv && . .venv/bin/activate && pip install ")
    assert "nucleiseg segment examples/" in commands[0]
    assert "[train]" not in commands[0] and "torch" not in commands[0]  # the core install segments


def test_ci_runs_readme_command_2_step_by_step():
    readme_steps = [normalise(step) for step in setup_commands()[1].split(" && ")]
    ci_lines = [normalise(line) for line in (REPO / ".ci" / "run").read_text().splitlines()
                if line.strip() and not line.startswith(("#", "set ", "cd ", "export ", "start=", "echo "))]
    assert ci_lines == readme_steps
    assert "-c requirements/ci.txt" in setup_commands()[1] and (REPO / "requirements" / "ci.txt").is_file()


def test_constraints_pin_every_line():
    lines = [line for line in (REPO / "requirements" / "ci.txt").read_text().splitlines() if line and not line.startswith("#")]
    assert lines and all(re.fullmatch(r"[a-z0-9][a-z0-9._-]*==[0-9][^\s+]*", line) for line in lines), lines[:3]
    names = {line.split("==")[0] for line in lines}
    assert {"torch", "onnxruntime", "pydantic", "albumentations", "pytest"} <= names
