"""The README's "As a library" example runs as written and prints the script's output."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def test_readme_library_example_runs(tmp_path):
    text = (REPO / "README.md").read_text()
    section = text[text.index("## As a library"):]
    code = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    (tmp_path / "examples").mkdir()
    shutil.copy(REPO / "examples/hello.sh", tmp_path / "examples/hello.sh")
    done = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[0].startswith("completed 0 hello world from ")
    assert [line.split(" ", 2)[:2] for line in lines[1:]] == [["0", "hello"]] * 3
    assert [line.split()[2] for line in lines[1:]] == ["0", "1", "2"]
    assert (tmp_path / "out/greeting.txt").read_text() == "world\n"
