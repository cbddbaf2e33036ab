"""`runaway logs NAME|UUID [-f]`: an execution's output. A running one's is read from its run
folder on the node where it runs; a finished one's from the folder its results were fetched
into. `-f` follows a running one until it ends.

NAME is a batch (or sched) here: its running execution, or pick one with `--uuid`. UUID (or a
unique prefix of it) is an execution of any batch here, or an exec run under ./runs."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import anyio
import attrs

from liborchestra.errors import OrchestraError
from liborchestra.execution import Execution
from liborchestra.federation import open_engine
from liborchestra.journal import Journal, Row, driver_alive
from liborchestra.shell import Shell
from liborchestra.transfer import INTERNAL
from runaway import batches
from runaway.render import Renderer

FINAL = ("completed", "failed", "lost", "cancelled")
_GONE = "@@runaway: no run folder@@"
PID_WAIT = 10.0  # seconds a starting run gets to write its pid file
RECORD_WAIT = 15.0  # seconds to wait, after a followed run ends, for its driver to record it


def add_parser(sub) -> None:
    p = sub.add_parser(
        "logs", help="the output of an execution, live while it runs",
        description="Show the stdout and stderr of an execution: live from its node while it "
                    "runs, else the fetched files. NAME is a batch here (its running "
                    "execution, or --uuid); UUID, or a unique prefix of it, an execution of "
                    "any batch here or an exec run under ./runs.")
    p.add_argument("target", metavar="NAME|UUID")
    p.add_argument("--uuid", help="with a batch NAME: which execution (a uuid or prefix)")
    p.add_argument("-f", "--follow", action="store_true",
                   help="follow a running execution until it ends")


@attrs.frozen
class _Found:
    journal: Path | None  # None: an exec run
    row: Row | None
    folder: Path  # where its results are (or will be) fetched


def _rows_matching(journal: Path, prefix: str) -> list[Row]:
    db = Journal.open(journal)
    try:
        return [r for r in db.rows() if r.uuid.startswith(prefix) or
                (r.run or "").startswith(prefix)]
    finally:
        db.close()


def find(target: str, uuid: str | None) -> _Found | list[Row]:
    """The execution meant, or the running rows of a batch to choose from."""
    for kind in batches.KINDS:
        path = Path(kind) / target / batches.JOURNAL
        if batches.is_name(target) and path.is_file():
            return _in_batch(path.resolve(), uuid)
    if uuid is not None:
        raise OrchestraError(f"--uuid goes with a batch NAME; no batch named {target!r} here")
    if len(target) < 4:
        raise OrchestraError(f"{target!r}: no batch of that name here, and too short for a "
                             "uuid prefix (give at least 4 characters)")
    matches = [(path, row) for path in batches.journals() for row in _rows_matching(path, target)]
    runs = Path("runs")
    execs = [p for p in runs.glob(f"{target}*") if p.is_dir()] if runs.is_dir() else []
    if len(matches) + len(execs) > 1:
        names = [f"{p.parent.name} #{r.seq} {r.uuid}" for p, r in matches]
        names += [f"runs/{p.name}" for p in execs]
        raise OrchestraError(f"{target!r} matches {len(names)} executions: "
                             + "; ".join(names[:8]) + " — give more of the uuid")
    if matches:
        path, row = matches[0]
        return _Found(path.resolve(), row, path.parent.resolve() / row.uuid)
    if execs:
        return _Found(None, None, execs[0].resolve())
    known = ", ".join(sorted({p.parent.name for p in batches.journals()})[-8:])
    raise OrchestraError(f"{target!r}: no batch of that name and no execution with that uuid "
                         f"here (batches: {known or 'none'}; exec runs under ./runs)")


def _in_batch(journal: Path, uuid: str | None) -> _Found | list[Row]:
    if uuid is not None:
        rows = _rows_matching(journal, uuid)
        if len(rows) != 1:
            raise OrchestraError(f"--uuid {uuid}: {len(rows)} executions of batch "
                                 f"{journal.parent.name} match")
        return _Found(journal, rows[0], journal.parent / rows[0].uuid)
    db = Journal.open(journal)
    try:
        running = db.rows("running")
    finally:
        db.close()
    if len(running) == 1:
        return _Found(journal, running[0], journal.parent / running[0].uuid)
    return running


async def logs(args: argparse.Namespace, renderer: Renderer, _signals) -> int:
    found = find(args.target, args.uuid)
    if isinstance(found, list):
        return _choose(args.target, found)
    row = found.row
    if row is not None and found.journal is not None:
        row = await _wait_placed(found.journal, row, args.follow, renderer)
        if row.state == "running" and row.run and row.node:
            ended = await _remote(found.journal, row, args.follow, renderer)
            if ended and args.follow:
                await _say_end(found.journal, row, renderer)
            if ended is not None:
                return 0
            row = _reread(found.journal, row)  # its folder went: fetched meanwhile
    shown = _fetched(found, row)
    if args.follow and row is not None and row.state in FINAL:
        exit_code = f" (exit {row.ecode})" if row.ecode is not None else ""
        renderer.note(f"#{row.seq} ended: {row.state}{exit_code}")
    return shown


def _choose(name: str, running: list[Row]) -> int:
    if not running:
        raise OrchestraError(f"no execution of batch {name} is running; pick one with --uuid "
                             f"(`runaway results {name} --format csv` lists their uuids)")
    print(f"{len(running)} executions of batch {name} are running; pick one with --uuid:")
    for row in running:
        print(f"  {row.uuid}  #{row.seq}  on {row.node}  {row.label}")
    return 0


def _reread(journal: Path, row: Row) -> Row:
    db = Journal.open(journal)
    try:
        return db.get(row.seq)
    finally:
        db.close()


async def _wait_placed(journal: Path, row: Row, follow: bool, renderer: Renderer) -> Row:
    """With -f, wait while the execution waits for a slot (as long as its driver runs)."""
    said = False
    while follow and row.state in ("queued", "submitted") and driver_alive(journal):
        if not said:
            renderer.note(f"#{row.seq} waits for a slot; following it once it starts")
            said = True
        await anyio.sleep(0.5)
        row = _reread(journal, row)
    return row


async def _remote(journal: Path, row: Row, follow: bool, renderer: Renderer) -> bool | None:
    """Copy the run folder's output to ours; True when it was followed to its end, False when
    shown as it is now, None when the run folder is gone."""
    db = Journal.open(journal)
    try:
        meta = db.meta()
    finally:
        db.close()
    async with open_engine(str(meta["profile"])) as engine:
        there, node, allocation = engine.locate(row.node, row.allocation)
        shell = there.node_shell(node, allocation)
        run = there.launcher.run_dir(Execution(script=Path(str(meta["script"])), uuid=row.run))
        streams = {"stdout": sys.stdout.buffer, "stderr": sys.stderr.buffer}
        gone = False
        async with anyio.create_task_group() as tg:
            async def copy(name: str) -> None:
                nonlocal gone
                if await _copy(shell, run, name, streams[name], follow):
                    gone = True
            for name in streams:
                tg.start_soon(copy, name)
    if gone:
        return None
    return follow


async def _copy(shell: Shell, run: str, name: str, out, follow: bool) -> bool:
    """One stream of a run folder to `out`; True when the folder is gone. Following, the
    remote `tail` ends with the run, or when this end closes (no process outlives us)."""
    path = f"{INTERNAL}/{name}"
    polls = int(PID_WAIT / 0.1)
    if follow:
        command = (f"cd {run} 2>/dev/null || {{ echo '{_GONE}'; exit 0; }}; n=0; "
                   f"while [ ! -s {INTERNAL}/pid ] && [ ! -s {INTERNAL}/ecode ] && "
                   f"[ $n -lt {polls} ]; do sleep 0.1; n=$((n + 1)); done; "
                   f"pid=$(cat {INTERNAL}/pid 2>/dev/null); exec 3<&0; "
                   f"tail -s 0.2 -n +1 -f ${{pid:+--pid=$pid}} {path} & t=$!; "
                   "{ cat <&3 > /dev/null; kill $t 2>/dev/null; } & w=$!; "
                   "wait $t; kill $w 2>/dev/null; true")
    else:
        command = f"cd {run} 2>/dev/null || {{ echo '{_GONE}'; exit 0; }}; cat {path}"
    async with shell.open(command) as pipe:
        first = True
        while line := await pipe.readline():
            if first and line.rstrip(b"\n") == _GONE.encode():
                return True
            first = False
            out.write(line)
            out.flush()
    return False


async def _say_end(journal: Path, row: Row, renderer: Renderer) -> None:
    deadline = time.monotonic() + RECORD_WAIT
    now = _reread(journal, row)
    while now.state not in FINAL and now.run == row.run and time.monotonic() < deadline:
        await anyio.sleep(0.3)
        now = _reread(journal, row)
    if now.state in FINAL:
        exit_code = f" (exit {now.ecode})" if now.ecode is not None else ""
        renderer.note(f"#{now.seq} ended: {now.state}{exit_code}")
    else:
        renderer.note(f"#{now.seq} ended; its driver has not recorded it yet")


def _fetched(found: _Found, row: Row | None) -> int:
    folder = found.folder
    what = f"#{row.seq} of batch {found.journal.parent.name}" if row is not None and \
        found.journal is not None else f"exec run {folder.name}"
    if row is not None and row.state in ("queued", "submitted"):
        raise OrchestraError(f"{what} has not started ({row.state}); `runaway logs "
                             f"{row.uuid} -f` waits for it while its driver runs")
    if not (folder / "stdout").is_file() and not (folder / "stderr").is_file():
        state = f" ({row.state})" if row is not None else ""
        raise OrchestraError(f"{what}{state}: no output here yet (nothing fetched into "
                             f"{folder})")
    for name, out in (("stdout", sys.stdout.buffer), ("stderr", sys.stderr.buffer)):
        path = folder / name
        if path.is_file():
            out.write(path.read_bytes())
            out.flush()
    return 0
