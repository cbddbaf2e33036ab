"""The federation on this machine: two `local` clusters share the work, names are qualified,
a bad profile list is one clear error. (Slurm + SGE + local, refusals, resume and cancel are in
tests/runaway/test_batch_clusters.py, on the test bed.)"""

from __future__ import annotations

import asyncio
import subprocess
import sys
from pathlib import Path

import anyio
import pytest

from liborchestra import events
from liborchestra.errors import OrchestraError
from liborchestra.execution import Execution, State
from liborchestra.federation import Federation, load_profiles, open_engine, profile_ref
from tests.helpers import write_profile, write_script


def _locals(tmp: Path, slots=(2, 2)) -> str:
    paths = [write_profile(tmp / f"p{i}", name, {
        "scheduler": {"kind": "local"}, "slots": n, "directory": str(tmp / f"remote-{name}")})
        for i, (name, n) in enumerate(zip(("east", "west"), slots, strict=True))]
    return ",".join(str(p) for p in paths)


def test_work_flows_to_both_clusters_and_names_say_where(tmp_path):
    script = write_script(tmp_path / "code", "job.sh", "#!/usr/bin/env bash\nsleep 0.3\n"
                          "echo \"ran $1 on $RUNAWAY_NODE_ID\"\n")
    seen: list[events.Event] = []

    async def main():
        async with open_engine(_locals(tmp_path), listeners=[seen.append]) as engine:
            assert isinstance(engine, Federation)
            futures = [engine.submit(Execution(script, [str(i)], output=tmp_path / "out" /
                                               str(i))) for i in range(12)]
            await asyncio.sleep(0.2)
            live = engine.allocator.live
            assert {key.split("/")[0] for key in live} <= {"east", "west"}
            return await asyncio.gather(*futures)

    results = anyio.run(main)
    assert [r.state for r in results] == [State.COMPLETED] * 12
    clusters = {r.node.split("/")[0] for r in results}
    assert clusters == {"east", "west"}, [r.node for r in results]
    started = [e for e in seen if isinstance(e, events.ExecutionStarted)]
    finished = [e for e in seen if isinstance(e, events.ExecutionFinished)]
    assert len(started) == 12 and len(finished) == 12  # the losing offers say nothing
    assert all(e.node.split("/")[0] in clusters and e.allocation.startswith(e.node.split("/")[0])
               for e in started)
    # each ran exactly once, on the cluster its result names
    for i, result in enumerate(results):
        out = (tmp_path / "out" / str(i) / "stdout").read_text().split()
        assert out == ["ran", str(i), "on", result.node.split("/", 1)[1]]


def test_cancelling_a_submission_withdraws_it_from_every_cluster(tmp_path):
    marker = tmp_path / "started"
    script = write_script(tmp_path / "code", "job.sh",
                          f"#!/usr/bin/env bash\necho x >> {marker}\nsleep 30\n")

    async def main():
        async with open_engine(_locals(tmp_path, (1, 1))) as engine:
            futures = [engine.submit(Execution(script, [str(i)])) for i in range(4)]
            with anyio.fail_after(20):
                while not marker.exists() or len(marker.read_text().split()) < 2:
                    await anyio.sleep(0.05)
            for future in futures:
                future.cancel()
            with anyio.move_on_after(10):  # the running two are killed, their slots freed
                while engine.slots.busy():
                    await anyio.sleep(0.05)
            return engine.slots.busy()

    assert anyio.run(main) == 0
    assert len(marker.read_text().split()) == 2  # the two waiting ones never started
    leftover = subprocess.run(["pgrep", "-f", str(script)], capture_output=True)
    assert leftover.returncode == 1, leftover.stdout


@pytest.mark.parametrize("spec, words", [
    ("{a},,{b}", "empty name"),
    ("{a},{a}", "named more than once"),
    ("{a},no-such-profile", "no-such-profile"),
])
def test_a_bad_profile_list_is_one_clear_error(tmp_path, spec, words):
    a, b = _locals(tmp_path).split(",")
    with pytest.raises(OrchestraError, match=words):
        load_profiles(spec.format(a=a, b=b))


def test_the_cli_refuses_a_bad_list_before_writing_anything(tmp_path):
    a, _ = _locals(tmp_path).split(",")
    script = write_script(tmp_path / "code", "job.sh", "#!/usr/bin/env bash\ntrue\n")
    done = subprocess.run([sys.executable, "-m", "runaway", "batch", f"{a},{a}", str(script),
                           "--name", "dup", "--", "{1;2}"], cwd=tmp_path, capture_output=True,
                          text=True, timeout=60)
    assert done.returncode == 2, done.stderr
    assert "named more than once" in done.stderr and "Traceback" not in done.stderr
    assert not (tmp_path / "batch" / "dup").exists()


def test_profile_ref_resolves_files_part_by_part(tmp_path, monkeypatch):
    """The journal names profile files by absolute path (a resume may start elsewhere) and
    profile names as given."""
    a, _ = _locals(tmp_path).split(",")
    monkeypatch.chdir(tmp_path)
    relative = Path(a).relative_to(tmp_path)
    assert profile_ref(f"{relative}, local") == f"{Path(a).resolve()},local"
