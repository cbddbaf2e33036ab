"""up.sh must not depend on its own leftovers: a bed brought up with a new, empty state folder
and a new, empty download cache comes up, like on a machine that never ran it.

The bed that the other tests use is taken down for this (the two would share the bridge, the
namespaces and /etc/slurm) and brought back up, fresh, afterwards.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest

from tests.conftest import TESTBED_SCRIPTS, _read_settings

pytestmark = pytest.mark.integration


def _run(script: str, env: dict[str, str], *args: str, timeout: float = 600):
    return subprocess.run(
        [str(TESTBED_SCRIPTS / script), *args],
        capture_output=True, text=True, timeout=timeout, env=env, stdin=subprocess.DEVNULL,
    )


def test_up_from_empty_state_and_cache(testbed):
    main_env = dict(os.environ, TB=str(testbed.dir))
    main_env.update(_read_settings(testbed.dir))
    # daemons running as other users (mysql, munge) write logs into the state folder:
    # it must be readable by them, as /tmp/testbed is (a pytest tmp_path is 700)
    root = Path(tempfile.mkdtemp(prefix="tb-fresh-", dir="/tmp"))
    root.chmod(0o755)
    state, cache = root / "state", root / "cache"
    fresh_env = dict(main_env, TB=str(state), TB_CACHE=str(cache))
    try:
        down = _run("down.sh", main_env, "--quiet")
        assert down.returncode == 0, down.stderr
        assert not testbed.dir.exists()

        up = _run("up.sh", fresh_env)
        assert up.returncode == 0, up.stdout[-3000:] + up.stderr[-3000:]
        assert "mode: fresh" in up.stdout
        assert "downloading slurm-wlm-torque" in up.stdout  # the cache really was empty
        assert list(cache.glob("slurm-wlm-torque_*.deb"))
        info = json.loads((state / "testbed.json").read_text())
        assert info["dir"] == str(state)

        check = _run("check.sh", fresh_env, timeout=120)
        assert check.returncode == 0, check.stdout[-3000:] + check.stderr[-3000:]
    finally:
        _run("down.sh", fresh_env, "--quiet")
        shutil.rmtree(root, ignore_errors=True)
        back = _run("up.sh", main_env)
    assert back.returncode == 0, back.stdout[-3000:] + back.stderr[-3000:]
    assert not state.exists()
