"""The engine end to end on three targets: this machine, the stock-limit sshd on 127.0.0.1,
and node1 reached through login as a jump host (the last two need the test bed)."""

from __future__ import annotations

import asyncio
import subprocess
import uuid
from pathlib import Path

import anyio
import pytest

from liborchestra import Engine, Execution, State, SyncEngine, events
from tests.helpers import (
    ARGV_SCRIPT,
    jump_profile,
    load,
    local_profile,
    stock_profile,
    write_script,
)

NASTY = ["it's", 'say "hi"', "$(touch /tmp/pwned-{tag})", "a; touch /tmp/pwned-{tag}",
         "line1\nline2", "`id`", "*", "", "--flag=1 2", "\\back"]


@pytest.fixture(params=["local", "stock", "jump"])
def target(request, tmp_path):
    """(profile, processes(marker) -> list of matching command lines on the executing host)."""
    if request.param == "local":
        return load(local_profile(tmp_path)), _local_procs
    testbed = request.getfixturevalue("testbed")
    if request.param == "stock":
        return load(stock_profile(testbed, tmp_path)), _local_procs

    def node_procs(marker: str) -> list[str]:
        return [line for line in testbed.procs("node1") if marker in line]

    return load(jump_profile(testbed, tmp_path)), node_procs


def _local_procs(marker: str) -> list[str]:
    out = subprocess.run(["pgrep", "-af", marker], capture_output=True, text=True).stdout
    return [line for line in out.splitlines() if "pgrep" not in line]


def run(coro):
    return anyio.run(lambda: coro, backend="asyncio")


def test_arguments_arrive_verbatim_and_nothing_is_executed(target, tmp_path):
    profile, _ = target
    tag = uuid.uuid4().hex[:8]
    args = [a.format(tag=tag) for a in NASTY]
    script = write_script(tmp_path / "code", "argv.sh", ARGV_SCRIPT)

    async def main():
        async with Engine(profile) as engine:
            return await engine.submit(Execution(script, args, output=tmp_path / "out"))

    result = run(main())
    assert result.state is State.COMPLETED, result.message
    received = (tmp_path / "out" / "argv.bin").read_bytes().split(b"\0")[:-1]
    assert [r.decode() for r in received] == args
    assert not Path(f"/tmp/pwned-{tag}").exists()
    env = dict(line.split("=", 1) for line in (tmp_path / "out/env.txt").read_text().splitlines()
               if "=" in line)
    assert env["RUNAWAY_UUID"] == result.execution.uuid
    assert env["RUNAWAY_REMOTE"] == profile.name
    assert env["RUNAWAY_NODE_ID"] == result.node and env["RUNAWAY_HANDLE_ID"] == result.slot
    assert env["RUNAWAY_PWD"].endswith(f"/runs/{result.execution.uuid}")
    assert env["RUNAWAY_SCRIPT_PATH"] == env["RUNAWAY_PWD"] + "/argv.sh"


def test_outputs_exit_code_and_fetch_ignore(target, tmp_path):
    profile, _ = target
    code = tmp_path / "code"
    script = write_script(code, "job.sh", """\
        echo to-stdout; echo to-stderr >&2
        mkdir -p results; echo 42 > results/answer.txt; echo junk > results/big.ckpt
        exit 3
        """, executable=False)
    (code / ".fetchignore").write_text("*.ckpt\n")
    (code / "input.txt").write_text("shipped, not fetched back\n")

    async def main():
        async with Engine(profile) as engine:
            return await engine.submit(Execution(script, output=tmp_path / "out"))

    result = run(main())
    out = tmp_path / "out"
    assert result.state is State.FAILED and result.ecode == 3
    assert (out / "results/answer.txt").read_text() == "42\n"
    assert not (out / "results/big.ckpt").exists()
    assert not (out / "input.txt").exists() and not (out / "job.sh").exists()
    assert (out / "stdout").read_text() == "to-stdout\n"
    assert (out / "stderr").read_text() == "to-stderr\n"
    assert (out / "ecode").read_text().strip() == "3"


def test_cancelling_kills_the_remote_process_group(target, tmp_path):
    profile, procs = target
    marker = f"sleep-{uuid.uuid4().hex[:8]}"
    script = write_script(tmp_path / "code", "slow.sh", f"""\
        bash -c 'exec -a {marker} sleep 300' &
        bash -c 'exec -a {marker} sleep 300'
        """)

    async def main():
        async with Engine(profile) as engine:
            future = engine.submit(Execution(script, output=tmp_path / "out"))
            for _ in range(100):
                if len(procs(marker)) >= 2:
                    break
                await anyio.sleep(0.1)
            assert len(procs(marker)) >= 2, "the script never started"
            future.cancel()
            with pytest.raises(asyncio.CancelledError):
                await future

    run(main())
    assert procs(marker) == []


def test_leave_policies(target, tmp_path):
    profile, _ = target
    script = write_script(tmp_path / "code", "job.sh", "echo hi > out.txt\n")

    async def main(leave):
        async with Engine(profile, leave=leave) as engine:
            result = await engine.submit(Execution(script, output=tmp_path / f"out-{leave}"))
            node = engine.slots.allocations[0].nodes[0]
            run_dir = engine.launcher.run_dir(result.execution)
        code = f"{profile.directory.replace('~', '$HOME')}/code"
        async with Engine(profile) as engine:  # look after the first engine has closed
            probe = await engine.shell(node).run(
                f"test -d {run_dir} && echo run; ls {code} | grep -c tar")
        return result, probe.stdout.decode().split()

    result, seen = run(main("everything"))
    assert result.ok and seen == ["run", "1"]
    result, seen = run(main("code"))
    assert result.ok and seen == ["1"]
    result, seen = run(main("nothing"))
    assert result.ok and seen == ["0"]


def test_code_is_sent_once_per_filesystem_until_it_changes(target, tmp_path):
    profile, _ = target
    code = tmp_path / "code"
    script = write_script(code, "job.sh", "true\n")
    (code / "weights.bin").write_bytes(b"w" * 200_000)

    def session(n):
        sent = []

        async def main():
            async with Engine(profile, listeners=[sent.append]) as engine:
                await asyncio.gather(*[engine.submit(Execution(script)) for _ in range(n)])
                return engine.code.bytes_sent

        nbytes = run(main())
        return [e for e in sent if isinstance(e, events.CodeSent)], nbytes

    first, nbytes = session(4)
    assert len(first) == 1 and nbytes > 200_000
    again, nbytes = session(2)
    assert again == [] and nbytes == 0
    (code / "job.sh").write_text("echo changed\n")
    changed, _ = session(1)
    assert len(changed) == 1 and changed[0].digest != first[0].digest


def test_sync_facade(tmp_path):
    profile = load(local_profile(tmp_path))
    script = write_script(tmp_path / "code", "job.sh", 'echo "$1" > out.txt\n')
    with SyncEngine(profile) as engine:
        results = engine.map(Execution(script, [str(i)], output=tmp_path / f"o{i}")
                             for i in range(6))
    assert all(r.ok for r in results)
    assert [(tmp_path / f"o{i}/out.txt").read_text() for i in range(6)] == \
        [f"{i}\n" for i in range(6)]
