"""Every README snippet runs verbatim, in order, in a fresh directory (issue 12.8); so does each
worked example of CONTRIBUTING.md (issue 10.6).

The ```bash and ```python blocks of README.md are run one after the other in one empty temporary
directory: bash blocks with ``bash -e`` (each line as a user would type it), python blocks as
``python -c``. Blocks that ``pip install`` are skipped: CI installs exactly that way already
(.ci/run_tests.sh), and reinstalling from inside the test suite would change the environment the
rest of the suite runs in. The README's own examples are kept small (KDE, blob, n ≤ 1000) so the
whole file runs in well under two minutes on two cores.
"""
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

README = Path(__file__).resolve().parents[1] / "README.md"
CONTRIBUTING = README.with_name("CONTRIBUTING.md")
FENCE = re.compile(r"^```(\w+)\n(.*?)^```", re.MULTILINE | re.DOTALL)


def readme_blocks(path=README) -> list[tuple[str, str]]:
    """``(language, code)`` of every fenced block of a markdown file, in order."""
    return [(lang, code) for lang, code in FENCE.findall(path.read_text(encoding="utf-8"))]


def test_readme_has_the_snippets_it_should():
    blocks = readme_blocks()
    assert sum(lang == "python" for lang, _ in blocks) >= 2
    assert any("particlescore run" in code for lang, code in blocks if lang == "bash")
    assert {lang for lang, _ in blocks} <= {"bash", "python"}, "a block the README test would not run"


def test_every_readme_snippet_runs_in_order_in_a_fresh_directory(tmp_path):
    env = dict(os.environ, OMP_NUM_THREADS=os.environ.get("OMP_NUM_THREADS", "1"), MPLBACKEND="Agg")
    ran = 0
    for index, (lang, code) in enumerate(readme_blocks()):
        if "pip install" in code:       # CI installs exactly this way already (see module docstring)
            continue
        command = ["bash", "-e", "-c", code] if lang == "bash" else [sys.executable, "-c", code]
        done = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
        assert done.returncode == 0, (f"README block {index} ({lang}) failed with status {done.returncode}:\n"
                                      f"{code}\n--- stdout\n{done.stdout[-3000:]}\n--- stderr\n{done.stderr[-3000:]}")
        ran += 1
    assert ran >= 3


@pytest.mark.parametrize("index", [i for i, (lang, _) in enumerate(readme_blocks(CONTRIBUTING)) if lang == "python"])
def test_contributing_examples_run(index, tmp_path):
    # each worked example is one file: run it alone (its __main__ part registers and uses it)
    code = readme_blocks(CONTRIBUTING)[index][1]
    env = dict(os.environ, OMP_NUM_THREADS=os.environ.get("OMP_NUM_THREADS", "1"), MPLBACKEND="Agg")
    done = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=600)
    assert done.returncode == 0 and "error" not in done.stderr.lower(), f"{code}\n{done.stdout}\n{done.stderr}"
