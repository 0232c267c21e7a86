"""README's Python examples run as written."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def python_blocks() -> list[str]:
    return re.findall(r"```python\n(.*?)```", (ROOT / "README.md").read_text(), flags=re.DOTALL)


@pytest.mark.slow
@pytest.mark.parametrize("index", range(2))
def test_readme_api_examples_run(index: int, tmp_path: Path) -> None:
    code = python_blocks()[index].replace('out_dir="results/', f'out_dir="{tmp_path}/')
    code = code.replace('"run.rounds=10"', '"run.rounds=2", "report.progress=false"')
    code = code.replace('overrides=["run.rounds=2", "report.progress=false"])',
                        f'overrides=["run.rounds=2", "report.progress=false", "report.out_dir=\\"{tmp_path}\\""])')
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]


def test_readme_has_exactly_two_commands_that_ci_runs() -> None:
    text = (ROOT / "README.md").read_text()
    section = text.split("## Two commands", 1)[1].split("\n## ", 1)[0]
    commands = re.findall(r"```bash\n(.*?)\n```", section, flags=re.DOTALL)
    assert len(commands) == 2
    assert commands[0].endswith("fedsim run quickstart")
    assert commands[1] in (ROOT / ".ci" / "run").read_text()
