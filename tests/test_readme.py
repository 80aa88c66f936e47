"""The README's quick start runs as written and prints the shapes it promises."""

import re
from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.md"


def test_quick_start_runs_as_written(capsys):
    text = README.read_text()
    match = re.search(r"## Quick start\n\n```python\n(.*?)```", text, re.S)
    assert match, "README has no Python quick start"
    lines = [line for line in match.group(1).splitlines() if line.strip()]
    assert len(lines) <= 10  # the ten-line quick start
    exec(compile(match.group(1), "README quick start", "exec"), {})
    printed = capsys.readouterr().out.strip()
    assert printed == (
        "torch.Size([4, 3, 32, 32]) torch.Size([4, 1, 8, 8]) torch.Size([4, 3, 32, 32])"
    )


def test_the_two_fresh_machine_commands_are_given():
    text = README.read_text()
    assert "pip install -e . && captum-regularized demo" in text
    assert 'pip install -e ".[test]" && pytest' in text
    ci = (README.parent / ".ci" / "run").read_text()
    assert 'pip install -e ".[test]" && pytest' in ci
