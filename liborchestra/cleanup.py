"""What runaway left on a profile's remote folder, and removing it safely.

The remote folder (the profile's `directory`, default `~/.orchestra`) holds `code/<digest>.tar`
(the send-once cache, and `.<digest>.tar.<pid>` partial uploads) and `runs/<run id>/` (one
folder per execution; its `.orchestra/` holds pid, node, digest, stdout, stderr, ecode). An
inventory says, for each, whether it may go:

- a run folder with an exit code, or whose process is gone, may go; one whose process still
  runs (checked on the node its `node` file names) never does, nor one that cannot be checked
  (node unreachable) or that is still starting (no pid yet, made a moment ago);
- an archive goes unless a run that may still be going names it, or it was used in the last
  CODE_IN_USE_GRACE seconds (a driver may be about to start runs from it).

The library decides and removes; the CLI renders the inventory.
"""

from __future__ import annotations

import contextlib
import shlex
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING

import anyio
import attrs

from liborchestra.agent import DIGEST
from liborchestra.engine import Engine
from liborchestra.errors import OrchestraError
from liborchestra.execution import Execution
from liborchestra.journal import Row
from liborchestra.schedulers import Node
from liborchestra.shell import LocalShell, Shell, SSHShell
from liborchestra.transfer import CODE_IN_USE_GRACE, INTERNAL, remote_path

if TYPE_CHECKING:
    from liborchestra.federation import Federation

STARTING_GRACE = 120.0  # seconds a run folder without a pid file is taken to be starting
FETCH_GRACE = 3600.0  # seconds a finished run unknown to the journals here may await its fetch
LEFTOVER_STATES = ("queued", "cancelled", "lost")  # rows whose run folder may linger
KILL_CONCURRENCY = 8

_SCAN = r"""cd @ROOT@ 2>/dev/null || { echo "none"; exit 0; }
echo "now $(date +%s)"
echo "host $(uname -n)"
for f in code/*.tar code/.*.tar.*; do
  [ -f "$f" ] || continue
  echo "archive $(stat -c '%s %Y' -- "$f") ${f#code/}"
done
for d in runs/*/; do
  [ -d "$d" ] || continue
  r=${d#runs/}; r=${r%/}; o="$d@INTERNAL@"
  e=-; [ -e "$o/ecode" ] && e=$(tr -dc '0-9-' < "$o/ecode"); [ -n "$e" ] || e=-
  p=$(tr -dc '0-9' < "$o/pid" 2>/dev/null); n=$(tr -dc 'A-Za-z0-9._-' < "$o/node" 2>/dev/null)
  g=$(tr -dc '0-9a-f' < "$o/digest" 2>/dev/null)
  t=$(stat -c %Y -- "$o/ecode" 2>/dev/null || stat -c %Y -- "$d")
  echo "run $(du -sk -- "$d" | cut -f1) $t $r $e ${p:--} ${n:--} ${g:--}"
done
for d in agent/*/ spare/*/; do
  [ -d "$d" ] || continue
  echo "agentfiles $(du -sk -- "$d" | cut -f1) $(stat -c %Y -- "$d") ${d%/}"
done
"""
_ALIVE = ("for p in @PIDS@; do if kill -0 -- -$p 2>/dev/null || kill -0 $p 2>/dev/null; "
          "then echo $p; fi; done")


@attrs.frozen
class RemoteArchive:
    place: str  # the host whose filesystem holds it
    name: str
    size: int  # bytes
    age: float  # seconds since last used
    keep: str = ""  # why it stays ("" : it may go)

    @property
    def partial(self) -> bool:
        return self.name.startswith(".")


@attrs.frozen
class RemoteRun:
    place: str
    run: str  # the run id (the execution's uuid, `.N` for later attempts)
    size: int  # bytes
    age: float  # seconds since it ended (or since its folder changed, when it has not)
    ecode: int | None
    node: str | None
    digest: str | None
    pid: int | None = None
    keep: str = ""  # why it stays ("" : it may go)


@attrs.frozen
class AgentFolder:
    """A node agent's files: `agent/<digest>`, one version of the agent (installed once per
    filesystem), or `spare/<host>-<pid>`, the finished run folders one agent keeps to reuse
    (removed as it ends; left behind when it is killed, until the next agent on that host)."""

    place: str
    kind: str  # "agent" or "spare"
    name: str
    size: int  # bytes
    age: float  # seconds since it last changed
    keep: str = ""  # why it stays ("" : it may go)


@attrs.frozen
class Inventory:
    """Everything found under a profile's remote folder, and what could not be looked at."""

    root: str
    archives: tuple[RemoteArchive, ...] = ()
    runs: tuple[RemoteRun, ...] = ()
    notes: tuple[str, ...] = ()  # places not looked at, with why
    agent_files: tuple[AgentFolder, ...] = ()


@attrs.frozen
class _Place:
    shell: Shell
    node: Node | None  # the node a listing shell stands for (liveness is checked there)


def _places(engine: Engine) -> tuple[list[_Place], list[str]]:
    """One shell per remote filesystem the profile writes to, and what is out of reach."""
    profile, scheduler = engine.profile, engine.scheduler
    kind = profile.scheduler.kind
    if kind == "local":
        node = scheduler.reach("local")
        return [_Place(engine.shell(node), None)], []
    if kind == "hosts":
        places, seen = [], set()
        for spec in profile.scheduler.hosts:
            node = scheduler.reach(spec.host)
            if node.filesystem not in seen:
                seen.add(node.filesystem)
                places.append(_Place(engine.shell(node), node))
        return places, []
    login = scheduler.login()
    shell: Shell = LocalShell() if login is None else SSHShell(engine.pool.host(login),
                                                               login.host)
    notes = [] if profile.shared_filesystem else [
        "shared_filesystem is false: only the login host's folder was looked at; folders on "
        "the nodes' own disks are not reached from here"]
    return [_Place(shell, None)], notes


async def inventory(engine: Engine, known: dict[str, str] | None = None,
                    grace: float = CODE_IN_USE_GRACE) -> Inventory:
    """Look at every remote filesystem of the engine's profile (nothing is changed).

    `known` maps run ids the caller's journals know to why they must stay ("" when their
    result is recorded and the folder may go); a finished run nobody knows may go once it
    ended FETCH_GRACE seconds ago (its driver would have fetched it by then)."""
    known = known or {}
    root = engine.profile.directory
    places, notes = _places(engine)
    archives: list[RemoteArchive] = []
    runs: list[RemoteRun] = []
    agent_files: list[AgentFolder] = []
    for place in places:
        try:
            found, runs_here, agents_here = await _scan(engine, place, root, grace, known)
        except OrchestraError as error:
            notes.append(f"{place.shell.name}: not looked at: {error}")
            continue
        archives += found
        runs += runs_here
        agent_files += agents_here
    return Inventory(root, tuple(archives), tuple(runs), tuple(notes), tuple(agent_files))


async def _scan(engine: Engine, place: _Place, root: str, grace: float, known: dict[str, str]
                ) -> tuple[list[RemoteArchive], list[RemoteRun], list[AgentFolder]]:
    done = await place.shell.run(_SCAN.replace("@ROOT@", remote_path(root))
                                 .replace("@INTERNAL@", INTERNAL))
    if done.returncode != 0:
        raise OrchestraError(done.stderr.decode(errors="replace").strip() or
                             f"listing {root} failed (status {done.returncode})")
    now, here, archives, runs, agent_files = 0.0, "", [], [], []
    for line in done.stdout.decode(errors="replace").splitlines():
        parts = line.split()
        if parts[:1] == ["now"] and len(parts) == 2:
            now = float(parts[1])
        elif parts[:1] == ["host"] and len(parts) == 2:
            here = parts[1]
        elif parts[:1] == ["archive"] and len(parts) == 4:
            archives.append(RemoteArchive(place.shell.name, parts[3], int(parts[1]),
                                          now - float(parts[2])))
        elif parts[:1] == ["run"] and len(parts) == 8:
            ecode = None if parts[4] in ("-", "") else int(parts[4])
            runs.append(RemoteRun(place.shell.name, parts[3], int(parts[1]) * 1024,
                                  now - float(parts[2]), ecode, _opt(parts[6]),
                                  _opt(parts[7]), int(parts[5]) if parts[5].isdigit() else None))
        elif parts[:1] == ["agentfiles"] and len(parts) == 4 and "/" in parts[3]:
            kind, name = parts[3].split("/", 1)
            agent_files.append(AgentFolder(place.shell.name, kind, name, int(parts[1]) * 1024,
                                           now - float(parts[2])))
    runs = await _judge_runs(engine, place, runs, known)
    going = {r.digest for r in runs if r.keep and r.digest}
    archives = [attrs.evolve(a, keep=_archive_keep(a, going, grace)) for a in archives]
    return archives, runs, await _judge_agent_files(engine, place, agent_files, grace, here)


def _opt(text: str) -> str | None:
    return None if text == "-" else text


def _archive_keep(archive: RemoteArchive, going: set[str], grace: float) -> str:
    if archive.name.removesuffix(".tar") in going:
        return "in use by a run that is still going"
    if archive.age < grace:
        return f"used {_ago(archive.age)} ago (a driver may still start runs from it)"
    return ""


def _ago(seconds: float) -> str:
    seconds = max(0, int(seconds))
    if seconds < 120:
        return f"{seconds} s"
    if seconds < 7200:
        return f"{seconds // 60} min"
    return f"{seconds // 3600} h"


async def _judge_runs(engine: Engine, place: _Place, runs: list[RemoteRun],
                      known: dict[str, str]) -> list[RemoteRun]:
    """Fill `keep` for each run; whether it still runs is asked of the node it runs on."""
    pids: dict[str | None, list[int]] = {}
    for run in runs:
        if run.ecode is None and run.pid is not None:
            pids.setdefault(run.node, []).append(run.pid)
    alive: dict[str | None, set[int] | None] = {}
    for node, numbers in pids.items():
        alive[node] = await _alive(engine, place, node, numbers)
    judged = []
    for run in runs:
        pid = run.pid
        if run.ecode is not None and run.run in known:
            keep = known[run.run]
        elif run.ecode is not None:
            keep = "" if run.age >= FETCH_GRACE else (
                f"ended {_ago(run.age)} ago; its driver may not have fetched it yet")
        elif pid is None:
            keep = "starting (no pid yet)" if run.age < STARTING_GRACE else ""
        elif alive.get(run.node) is None:
            keep = f"cannot tell whether it runs (node {run.node or '?'} not reachable)"
        elif pid in alive[run.node]:
            keep = "running"
        else:
            keep = known.get(run.run, "")
        judged.append(attrs.evolve(run, keep=keep))
    return judged


async def _judge_agent_files(engine: Engine, place: _Place, folders: list[AgentFolder],
                             grace: float, here: str) -> list[AgentFolder]:
    """Fill `keep`: this runaway's agent stays, and a version installed in the last `grace`
    seconds (an older runaway may be starting it); a spare folder stays while its agent (the
    pid in its name, on the host in its name) runs, or cannot be asked."""
    owners = {folder: _owner(folder) for folder in folders}
    pids: dict[str, list[int]] = {}
    for owner in filter(None, owners.values()):
        pids.setdefault(owner[0], []).append(owner[1])
    alive = {host: await _agents_alive(engine, place, host, numbers, here)
             for host, numbers in pids.items()}
    judged = []
    for folder, owner in owners.items():
        if folder.kind == "agent":
            keep = "the node agent of this runaway" if folder.name == DIGEST else (
                f"installed {_ago(folder.age)} ago (may be starting)" if folder.age < grace
                else "")
        elif owner is None:
            keep = "not a folder runaway makes"
        elif alive[owner[0]] is None:
            keep = f"cannot tell whether its agent runs (host {owner[0]} not reachable)"
        else:
            keep = "its agent runs" if owner[1] in alive[owner[0]] else ""
        judged.append(attrs.evolve(folder, keep=keep))
    return judged


def _owner(folder: AgentFolder) -> tuple[str, int] | None:
    """The host and pid of the agent a spare folder is named for (None: not a spare's name)."""
    host, _, pid = folder.name.rpartition("-")
    return (host, int(pid)) if folder.kind == "spare" and host and pid.isdigit() else None


async def _agents_alive(engine: Engine, place: _Place, host: str, pids: list[int],
                        here: str) -> set[int] | None:
    """Which agents of `host` (the name it gives itself) live, asked of that node: of the
    listing host itself when it is `host` (`here`; a hosts profile may name it otherwise,
    by an address say), else of the node by that name; None when it cannot be asked (as
    another machine's folder through a local profile's)."""
    kind = engine.profile.scheduler.kind
    if kind in ("local", "hosts") and host == here:
        return await _alive(engine, place, None, pids)
    if kind == "local":
        return None
    return await _alive(engine, place, host, pids)


async def _alive(engine: Engine, place: _Place, node: str | None,
                 pids: list[int]) -> set[int] | None:
    """Which pids (process groups) live on `node`; None when it cannot be asked."""
    kind = engine.profile.scheduler.kind
    if node is None:  # a run folder of an older version: only the listing host can tell
        if kind not in ("local", "hosts"):
            return None
        shell = place.shell
    else:
        try:
            shell = engine.shell(engine.scheduler.reach(node))
        except OrchestraError:
            return None
    command = _ALIVE.replace("@PIDS@", " ".join(map(str, pids)))
    try:
        with anyio.fail_after(60):
            done = await shell.run(command)
    except (OrchestraError, TimeoutError):
        return None
    return {int(p) for p in done.stdout.decode().split() if p.isdigit()}


async def remove(engine: Engine, found: Inventory) -> Inventory:
    """Remove what `found` says may go; returns what was removed (keep = "" for all)."""
    places = {p.shell.name: p.shell for p in _places(engine)[0]}
    root = remote_path(found.root)
    gone_runs, gone_archives, gone_agent_files = [], [], []
    for name, shell in places.items():
        runs = [r for r in found.runs if r.place == name and not r.keep]
        archives = [a for a in found.archives if a.place == name and not a.keep]
        agent_files = [f for f in found.agent_files if f.place == name and not f.keep]
        paths = ([f"{root}/runs/{shlex.quote(r.run)}" for r in runs] +
                 [f"{root}/code/{shlex.quote(a.name)}" for a in archives] +
                 [f"{root}/{f.kind}/{shlex.quote(f.name)}" for f in agent_files])
        for start in range(0, len(paths), 200):
            done = await shell.run("rm -rf -- " + " ".join(paths[start:start + 200]))
            if done.returncode != 0:
                raise OrchestraError(f"{name}: could not remove: "
                                     f"{done.stderr.decode(errors='replace').strip()}")
        gone_runs += runs
        gone_archives += archives
        gone_agent_files += agent_files
    return Inventory(found.root, tuple(gone_archives), tuple(gone_runs), found.notes,
                     tuple(gone_agent_files))


async def remove_leftovers(engine: Engine | Federation, rows: Iterable[Row], script: Path) -> int:
    """Kill what may still run of these rows' runs (not in flight: left by an interrupted
    driver, a triple Ctrl-C or a cancel) and remove their run folders now. Returns how many
    rows had a run to look at."""
    todo = [r for r in rows if r.state in LEFTOVER_STATES and r.run and r.node]
    limiter = anyio.CapacityLimiter(KILL_CONCURRENCY)

    async def one(row: Row) -> None:
        async with limiter:
            with contextlib.suppress(OrchestraError):
                await engine.kill_run(Execution(script=script, uuid=row.run), row.node,
                                      row.allocation)

    async with anyio.create_task_group() as tg:
        for row in todo:
            tg.start_soon(one, row)
    await engine.sweep()
    return len(todo)
