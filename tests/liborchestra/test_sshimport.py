"""asyncssh's import without the gcc probe: run in fresh interpreters, with a gcc on PATH
that only records that it ran."""

from __future__ import annotations

import ctypes.util
import os
import subprocess
import sys
from pathlib import Path

import pytest

from liborchestra import sshimport

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="Linux lookup")


def _gcc_runs(tmp_path: Path, code: str) -> list[str]:
    bin_dir, log = tmp_path / "bin", tmp_path / "gcc.log"
    bin_dir.mkdir()
    gcc = bin_dir / "gcc"
    gcc.write_text(f"#!/bin/sh\necho \"$*\" >> {log}\nexit 1\n")
    gcc.chmod(0o755)
    env = dict(os.environ, PATH=f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    subprocess.run([sys.executable, "-c", code], env=env, check=True)
    return log.read_text().splitlines() if log.exists() else []


def test_asyncssh_alone_asks_gcc_for_liboqs(tmp_path):
    """What the module is for: without it, importing asyncssh runs gcc."""
    runs = _gcc_runs(tmp_path, "import asyncssh")
    assert any("oqs" in run for run in runs)


def test_asyncssh_through_sshimport_does_not_run_gcc(tmp_path):
    code = ("import ctypes.util; before = ctypes.util.find_library\n"
            "from liborchestra import sshimport\n"
            "module = sshimport.import_module('asyncssh')\n"
            "assert module.connect and ctypes.util.find_library is before\n")
    assert _gcc_runs(tmp_path, code) == []


def test_the_lookup_without_gcc_finds_what_ldconfig_knows():
    lookup = sshimport._without_gcc(ctypes.util)
    assert lookup is not None
    assert lookup("c") == ctypes.util.find_library("c") is not None
    assert lookup("no-such-library-anywhere") is None
