"""The README's quick start runs as written."""

import re
from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.md"


def test_quick_start_runs(capsys):
    text = README.read_text()
    block = re.search(r"## Quick start\s+```python\n(.*?)```", text, re.S)
    assert block is not None, "README has no python quick start"
    code = block.group(1)
    assert len(code.strip().splitlines()) <= 14
    exec(compile(code, str(README), "exec"), {})
    printed = capsys.readouterr().out
    assert "torch.Size([4, 3, 32, 32]) torch.Size([4, 1, 8, 8]) torch.Size([4, 3, 32, 32])" in printed


def test_readme_gives_the_two_fresh_machine_commands():
    text = README.read_text()
    assert "pip install -e . && captum-regularized demo" in text
    assert 'pip install -e ".[test]" && pytest' in text
