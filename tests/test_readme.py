"""The README's Quickstart stays true: two command lines, the second is what CI runs."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def quickstart_lines() -> list[str]:
    text = (ROOT / "README.md").read_text()
    section = text.split("## Quickstart", 1)[1].split("\n## ", 1)[0]
    block = re.search(r"```bash\n(.*?)```", section, re.S)
    assert block, "Quickstart has no bash block"
    return [line for line in block.group(1).splitlines() if line.strip()]


def test_quickstart_has_two_lines_run_job_and_tests() -> None:
    run_job, run_tests = quickstart_lines()
    assert run_job.endswith("python -m daskcubes.workflow")
    assert "pytest" in run_tests


def test_ci_runs_the_quickstart_test_line_verbatim() -> None:
    ci = (ROOT / ".ci" / "run").read_text().splitlines()
    assert quickstart_lines()[1] in ci


def test_ci_runs_the_test_line_first_in_a_fresh_venv_with_the_newest_pip() -> None:
    ci = (ROOT / ".ci" / "run").read_text()
    fresh = ci.index("-m pip install --quiet --upgrade pip")
    # Bounded: a resolver that backtracks fails the run instead of running for hours.
    assert re.search(r"timeout \d+ " + re.escape(quickstart_lines()[1]), ci[fresh:])
    # Before CI installs anything the README's lines do not.
    assert ci.index(quickstart_lines()[1], fresh) < ci.index("pip install torch")
