"""asyncssh's import without the gcc probe (nor ld's, without LD_LIBRARY_PATH): run in fresh
interpreters, with a gcc or ld on PATH that only records that it ran."""

from __future__ import annotations

import ctypes.util
import os
import subprocess
import sys
from pathlib import Path

import pytest

from liborchestra import sshimport

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="Linux lookup")


def _runs(tmp_path: Path, code: str, tool: str = "gcc", **env: str) -> list[str]:
    """The command lines `tool` ran with while `code` ran."""
    bin_dir, log = tmp_path / "bin", tmp_path / f"{tool}.log"
    bin_dir.mkdir(parents=True)
    fake = bin_dir / tool
    fake.write_text(f"#!/bin/sh\necho \"$*\" >> {log}\nexit 1\n")
    fake.chmod(0o755)
    env = {**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}", **env}
    subprocess.run([sys.executable, "-c", code], env=env, check=True)
    return log.read_text().splitlines() if log.exists() else []


def test_asyncssh_alone_asks_gcc_for_liboqs(tmp_path):
    """What the module is for: without it, importing asyncssh runs gcc."""
    runs = _runs(tmp_path, "import asyncssh")
    assert any("oqs" in run for run in runs)


def test_asyncssh_through_sshimport_does_not_run_gcc(tmp_path):
    code = ("import ctypes.util; before = ctypes.util.find_library\n"
            "from liborchestra import sshimport\n"
            "module = sshimport.import_module('asyncssh')\n"
            "assert module.connect and ctypes.util.find_library is before\n")
    assert _runs(tmp_path, code) == []


_THROUGH_SSHIMPORT = ("from liborchestra import sshimport\n"
                      "assert sshimport.import_module('asyncssh').connect\n")


def test_without_a_library_path_ld_does_not_run_either(tmp_path):
    assert _runs(tmp_path, "import asyncssh", tool="ld", LD_LIBRARY_PATH="")
    assert _runs(tmp_path / "b", _THROUGH_SSHIMPORT, tool="ld", LD_LIBRARY_PATH="") == []


def test_with_a_library_path_ld_still_looks_there(tmp_path):
    """LD_LIBRARY_PATH names folders only ld reads: there the lookup is Python's own."""
    runs = _runs(tmp_path, _THROUGH_SSHIMPORT, tool="ld", LD_LIBRARY_PATH=str(tmp_path))
    assert runs and all(f"-L {tmp_path}" in run and "oqs" in run for run in runs)


def test_the_lookup_without_gcc_finds_what_ldconfig_knows():
    lookup = sshimport._without_gcc(ctypes.util)
    assert lookup is not None
    assert lookup("c") == ctypes.util.find_library("c") is not None
    assert lookup("no-such-library-anywhere") is None
