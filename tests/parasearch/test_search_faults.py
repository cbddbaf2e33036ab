"""A search under a fault on the bed: a node killed mid-search."""

from __future__ import annotations

import time
import uuid

from tests.helpers import ssh_options, write_profile, write_script
from tests.parasearch.test_search_store import SCRIPT, driver, shared_log, stored


def test_a_node_killed_mid_search_loses_nothing_and_breaks_nothing(testbed, tmp_path):
    name = f"node-{uuid.uuid4().hex[:8]}"
    log = shared_log(testbed, tmp_path)
    script = write_script(tmp_path / "code", "f.sh", SCRIPT.replace('"$LOG"', str(log)))
    profile = write_profile(tmp_path / "profiles", "nodes", {
        "ssh": ssh_options(testbed, host="login", connect_timeout="3s"),
        "scheduler": {"kind": "hosts", "hosts": [{"host": n, "slots": 2}
                                                 for n in testbed.nodes]},
        "directory": f"~/.orchestra-tests/{uuid.uuid4().hex}"})
    store = f"sqlite:///{tmp_path / 'store.sqlite'}"
    proc = driver(name, profile, script, tmp_path / "a", store, "--n", "24",
                  "--max-broken", "1", env={"SLEEP": "1.5"})
    try:
        deadline = time.monotonic() + 60
        while "node2" not in log.read_text():
            assert time.monotonic() < deadline, "nothing ran on node2"
            time.sleep(0.1)
        testbed.kill_host("node2")
        assert proc.wait(300) == 0, proc.stderr.read()
    finally:
        if proc.poll() is None:
            proc.kill()
        testbed.revive()
    rows = stored(store, name)
    assert [r[1] for r in rows].count("completed") == 24
    assert "failed" not in {r[1] for r in rows}  # lost with the node: re-run, not broken
    hosts = [line.split()[1] for line in log.read_text().splitlines()]
    assert hosts.count("node2") >= 1 and len(hosts) > 24  # some ran again elsewhere
