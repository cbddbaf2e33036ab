"""The test bed's Slurm profile behind a batch launched from the page and shown live: the
executions run on the bed's nodes, in a Slurm allocation, and the page shows where."""

from __future__ import annotations

import re

import pytest

from orchestra.discovery import entry_id
from tests.helpers import slurm_profile, write_script
from tests.orchestra.test_orchestra_http import _wait
from tests.orchestra.web import serving

pytestmark = pytest.mark.timeout(180)


def test_a_slurm_batch_launched_from_the_page_runs_on_the_bed_live(testbed, tmp_path):
    script = write_script(tmp_path / "code", "where.sh",
                          '#!/usr/bin/env bash\nsleep 2\necho "on $(hostname) with $*"\n')
    with serving(tmp_path) as server:
        answer = server.post("/launch", {
            "csrf": server.csrf(), "profile": str(slurm_profile(testbed, tmp_path)),
            "script": str(script), "name": "onslurm", "template": "--k={1;2;3}"})
        assert answer.status == 303, answer.body[:500]
        page = answer.headers["location"]
        assert page == "/batch/" + entry_id((tmp_path / "batch/onslurm/journal.sqlite")
                                            .resolve())
        running = _wait(server, page, '<td class="state running">', timeout=120)
        assert re.search(r"<td>(node\d) / ", running)  # placed on a bed node, shown live
        done = _wait(server, page, "completed 3", timeout=120)
        nodes = set(re.findall(r"<td>(node\d) / ", done))
        assert nodes and nodes <= set(testbed.nodes)
        one = server.get(page + "/1").body
        assert re.search(r"on node\d with --k=1", one)
        allocation = re.search(r"<th>allocation</th><td>(\d+)</td>", one)
        assert allocation, one  # the Slurm job behind it
