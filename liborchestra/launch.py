"""How an execution reaches a slot: the remote wrapper, reattachment, and cancellation.

The wrapper makes the run folder, unpacks the code, and starts the script *detached* in its own
session (`setsid`), writing stdout, stderr and finally its exit code into files of the run
folder. The channel only watches: it waits for the script (and streams its output when asked),
then packs the results. So a dropped connection does not kill a running script: the engine
reattaches, waits for the exit code file, and fetches. Cancelling kills the script's whole
process group.
"""

from __future__ import annotations

import functools
import logging
import os
import shlex
from pathlib import Path
from typing import Callable

import anyio
import attrs

from liborchestra import clock, events
from liborchestra.agent import AgentLost, Agents, Record
from liborchestra.errors import CodeMissing, ConnectionLostError, LaunchError, SSHError
from liborchestra.execution import TAIL, Execution, Result, State
from liborchestra.node_keeper import write_bytes
from liborchestra.shell import Shell
from liborchestra.slots import Slot
from liborchestra.transfer import (
    INTERNAL,
    OUTPUT_MARKER,
    CodeArchive,
    IgnoreRules,
    ResultSink,
    mark_output,
    pack_command,
    remote_path,
)

log = logging.getLogger(__name__)
REATTACH_ATTEMPTS = 3
PID_WAIT_POLLS = 100  # tenths of a second a starting run gets to write its pid file
_SETUP_FAILED = 96
LONG_RUNNER = 64 * 1024  # bytes, quoted: a longer wrapper script goes on stdin, not in the command
_CODE_MISSING = 95


@attrs.frozen
class LaunchSettings:
    """What the profile and the command line say about every execution."""

    profile: str
    root: str  # remote directory (RUNAWAY_PATH)
    setup: tuple[str, ...] = ()
    env: tuple[tuple[str, str], ...] = ()
    leave: str = "code"
    fetch_ignore: str = ".fetchignore"
    execution: tuple[str, ...] = ()  # legacy profiles: the commands that run the script
    kill_grace: float = 5.0  # seconds between SIGTERM and SIGKILL of a stopped script


class Launcher:
    def __init__(self, settings: LaunchSettings, emit: Callable[[events.Event], None],
                 agents: Agents | None = None, barrier: Callable[[], None] = lambda: None) -> None:
        self.settings, self.emit, self.barrier = settings, emit, barrier  # Engine.barrier
        self.agents = agents  # None: every execution through the shell wrapper
        self.code_missing: Callable[[str, str], None] = lambda filesystem, digest: None
        self._trash: dict[Shell, list[str]] = {}
        self._scripts: dict[tuple, _Prepared] = {}
        self._marked: set[str] = set()  # folders known to hold the results marker

    def _prepared(self, execution: Execution) -> _Prepared:
        """What every execution of one script shares, worked out once per engine (the code
        is archived once per engine too): paths resolved, ignore rules, interpreter."""
        key = (execution.script, execution.code)
        prepared = self._scripts.get(key)
        if prepared is None:
            code = execution.code_dir
            try:
                runner: tuple[str, ...] | LaunchError = () if _executable(execution.script) \
                    else tuple(interpreter(execution.script))
            except LaunchError as error:  # raised when a run needs it, not when recovering
                runner = error
            prepared = _Prepared(
                rules=IgnoreRules.read(code / self.settings.fetch_ignore),
                script=execution.script.resolve().relative_to(code).as_posix(), runner=runner)
            self._scripts[key] = prepared
        return prepared

    def _mark(self, output: Path) -> None:
        """Mark an output folder as results (not when it holds the user's own files): in a
        folder already marked (a batch's), making it is enough, and its parent is looked at
        once per engine."""
        parent = os.path.dirname(output)
        if parent in self._marked:
            try:
                os.mkdir(output)
            except FileExistsError:
                pass
            except FileNotFoundError:  # the batch's folder was removed meanwhile
                os.makedirs(output, exist_ok=True)
            return
        if mark_output(output) and os.path.isfile(os.path.join(parent, OUTPUT_MARKER)):
            self._marked.add(parent)

    def run_dir(self, execution: Execution) -> str:
        return _run_dir(self.settings.root, execution.uuid)

    async def run(self, shell: Shell, slot: Slot, execution: Execution,
                  archive: CodeArchive) -> Result:
        """Run to the end, fetch, clean up. Cancellation kills the remote process group."""
        started = clock.now()
        record: dict[str, bytes] = {}
        try:
            record = await self._run_and_fetch(shell, slot, execution, archive)
        except anyio.get_cancelled_exc_class():
            with anyio.CancelScope(shield=True), anyio.move_on_after(
                    self.settings.kill_grace + 10):
                await self.kill(shell, execution)
            raise
        except (SSHError, LaunchError) as error:
            if isinstance(error, CodeMissing):
                self.code_missing(slot.node.filesystem, archive.digest)
            down = isinstance(error, SSHError) and not isinstance(error, ConnectionLostError)
            return Result(execution, State.LOST, node=slot.node.name, slot=slot.handle,
                          started=started, finished=clock.now(), message=str(error),
                          node_down=down)
        return _result(execution, record, slot.node.name, slot.handle, started)

    async def recover(self, shell: Shell, execution: Execution, node: str,
                      slot: str | None = None) -> Result | None:
        """The result of a run started by an earlier driver (resume): waits for it if it still
        runs. None when there is nothing to recover (no run folder, no exit code). Raises
        SSHError when the node cannot be reached: the run may still be alive there."""
        rules = self._prepared(execution).rules
        started = clock.now()
        try:
            sink = await self._reattach(shell, execution,
                                        pack_command(self.run_dir(execution), rules))
        except LaunchError:
            return None  # no run folder: it never started, or its results were fetched
        record = self._store(shell, execution, sink)
        if not record.get("ecode", b"").strip():
            return None
        return _result(execution, record, node, slot, started)

    def _store(self, shell: Shell, execution: Execution,
               sink: ResultSink | Record) -> dict[str, bytes]:
        """Unpack fetched results into the output folder, then queue the run folder's removal."""
        if execution.output is not None:
            self._mark(execution.output)
        record = sink.unpack(execution.output)
        if execution.output is not None:
            folder = str(execution.output)
            for name in ("stdout", "stderr", "ecode"):
                write_bytes(os.path.join(folder, name), record.get(name, b""))
        self.discard(shell, execution)
        return record

    async def _run_and_fetch(self, shell: Shell, slot: Slot, execution: Execution,
                             archive: CodeArchive) -> dict[str, bytes]:
        rules = self._prepared(execution).rules
        pack = pack_command(self.run_dir(execution), rules)
        # Said as its order is made, not before the node's agent is up (which can take
        # seconds): the barrier that sends the order, at most the agent's FLUSH_DELAY later,
        # commits the placement the event records, so whoever reads the event and asks the
        # journal finds the execution running. Once: by the order, or below without an agent.
        start = functools.partial(self.emit, events.ExecutionStarted(
            execution.uuid, slot.node.name, slot.handle, slot.allocation.id, archive.digest))
        if self.agents is not None and not execution.stream:
            agent_sink = await self._through_agent(shell, slot, execution, archive, rules, pack,
                                                   start)
            if agent_sink is not None:
                return self._store(shell, execution, agent_sink)
        start()
        sink = ResultSink()
        command, runner = self.start_command(slot, execution, archive)
        errors: list[bytes] = []
        self.barrier()
        try:
            if execution.stream:
                status = await self._stream(shell, execution, command, runner)
                if status not in (_SETUP_FAILED, _CODE_MISSING):
                    status = await shell.stream(pack, sink.write, errors.append)
            else:
                status = await shell.stream(f"{command}\nwait $pid\n{pack}", sink.write,
                                            errors.append, input=runner)
        except ConnectionLostError as error:
            self.emit(events.ConnectionProblem(shell.name, str(error)))
            sink = await self._reattach(shell, execution, pack)
            status = 0
        if status == _CODE_MISSING:
            raise CodeMissing(f"{shell.name}: the code archive {archive.name} is gone from "
                              f"{self.settings.root}/code; it is sent again")
        if status != 0:
            detail = b"".join(errors).decode(errors="replace").strip()
            raise LaunchError(f"{shell.name}: could not prepare or pack the run folder of "
                              f"{execution.uuid} (status {status}): {detail}")
        return self._store(shell, execution, sink)

    async def _through_agent(self, shell: Shell, slot: Slot, execution: Execution,
                             archive: CodeArchive, rules: IgnoreRules, pack: str,
                             start: Callable[[], None]) -> ResultSink | Record | None:
        """The node agent starts it and sends the results back; None when the node has no
        agent. When the agent dies meanwhile, reattach to the run folder like after any lost
        connection."""
        root = self.settings.root
        base = {"op": "run", "id": execution.uuid, "dir": f"{root}/runs/{execution.uuid}",
                "archive": f"{root}/code/{archive.name}", "ignore": list(rules.patterns)}

        def order(direct: bool) -> dict:
            start()
            if not direct or self.settings.setup or self.settings.execution:
                return dict(base, runner=self.runner_script(slot, execution, archive,
                                                            touch=False))
            prepared = self._prepared(execution)
            if isinstance(prepared.runner, LaunchError):
                raise prepared.runner
            return dict(base, argv=[*prepared.runner, "./" + prepared.script, *execution.args],
                        env=self._environment(slot, execution), root=root,
                        script=prepared.script, node=slot.node.name, digest=archive.digest)

        try:
            return await self.agents.run(shell, order)
        except AgentLost as lost:
            self.emit(events.ConnectionProblem(shell.name, str(lost)))
            return await self._reattach(shell, execution, pack)

    async def _stream(self, shell: Shell, execution: Execution, start: str,
                      runner: bytes | None) -> int:
        def out(data: bytes) -> None:
            self.emit(events.Output(execution.uuid, "stdout", data))

        def err(data: bytes) -> None:
            self.emit(events.Output(execution.uuid, "stderr", data))

        follow = (f"tail -s 0.05 -n +1 -f --pid=$pid {INTERNAL}/stdout & t1=$!; "
                  f"tail -s 0.05 -n +1 -f --pid=$pid {INTERNAL}/stderr >&2 & t2=$!; "
                  "wait $pid; wait $t1 $t2")
        return await shell.stream(f"{start}\n{follow}", out, err, input=runner)

    async def _reattach(self, shell: Shell, execution: Execution, pack: str) -> ResultSink:
        """After a lost connection: wait for the detached script to end, then fetch."""
        run = self.run_dir(execution)
        # A run folder without a pid file may still be starting (its wrapper unpacks the code
        # first, and outlives the driver that sent it): wait for the pid a while before
        # deciding that the script never started.
        wait = (f"cd {run} || exit 97; n=0; while [ ! -s {INTERNAL}/pid ] && "
                f"[ ! -s {INTERNAL}/ecode ] && [ $n -lt {PID_WAIT_POLLS} ]; do "
                "sleep 0.1; n=$((n + 1)); done; "
                f"pid=$(cat {INTERNAL}/pid 2>/dev/null); "
                f"while [ ! -s {INTERNAL}/ecode ] && [ -n \"$pid\" ] && kill -0 \"$pid\" "
                "2>/dev/null; do sleep 0.2; done")
        error: SSHError | None = None
        for attempt in range(REATTACH_ATTEMPTS):
            sink = ResultSink()
            try:
                status = await shell.stream(f"{wait}\n{pack}", sink.write, _drop)
            except ConnectionLostError as lost:
                error = lost
                await anyio.sleep(0.5 * 2 ** attempt)
                continue
            if status == 97:
                raise LaunchError(f"{shell.name}: run folder of {execution.uuid} vanished")
            return sink
        raise error or SSHError(f"{shell.name}: could not reattach to {execution.uuid}")

    def start_command(self, slot: Slot, execution: Execution,
                      archive: CodeArchive) -> tuple[str, bytes | None]:
        """Shell text that prepares the run folder and starts the script detached ($pid), and
        what to send on its standard input: the wrapper's script when it is long (within the
        command, long arguments made the command longer than one argument may be, 128 KiB)."""
        root = remote_path(self.settings.root)
        runner = self.runner_script(slot, execution, archive)
        given: bytes | None = None
        quoted = shlex.quote(runner)
        read, write = "", f"printf '%s' {quoted} > {INTERNAL}/run.sh"
        if len(quoted.encode()) > LONG_RUNNER:
            given = runner.encode()
            read = 'runner=$(cat); '  # first: an early exit must not leave it unread
            write = f"printf '%s\\n' \"$runner\" > {INTERNAL}/run.sh"
        return "\n".join([
            f"{read}[ -f {root}/code/{archive.name} ] || exit {_CODE_MISSING}",
            f"mkdir -p {self.run_dir(execution)}/{INTERNAL} && cd {self.run_dir(execution)} "
            f"&& tar -xf {root}/code/{archive.name} || exit {_SETUP_FAILED}",
            f": > {INTERNAL}/stdout; : > {INTERNAL}/stderr",
            write,
            f"setsid bash {INTERNAL}/run.sh < /dev/null > /dev/null 2>&1 &",
            f"pid=$!; echo $pid > {INTERNAL}/pid",
        ]), given

    def runner_script(self, slot: Slot, execution: Execution,
                      archive: CodeArchive | None = None, touch: bool = True) -> str:
        """The detached script: environment, setup, the user's script, the exit code file.
        It first notes its node and code (for `runaway logs` and `clean`) and marks the
        archive used now (the code cache keeps the most recently used; the node agent marks
        it itself, `touch=False`, saving a process per execution)."""
        s = self.settings
        run = self.run_dir(execution)
        prepared = self._prepared(execution)
        script = prepared.script
        if isinstance(prepared.runner, LaunchError):
            raise prepared.runner
        paths = {"RUNAWAY_PATH": remote_path(s.root), "RUNAWAY_SCRIPT_PATH":
                 f"{run}/{shlex.quote(script)}", "RUNAWAY_PWD": run}
        env = [(k, paths[k] if v is None else shlex.quote(v))
               for k, v in self._environment(slot, execution)]
        command = " ".join([*map(shlex.quote, prepared.runner), shlex.quote("./" + script),
                            *map(shlex.quote, execution.args)])
        if s.execution:
            command = _legacy_execution(s.execution, execution.args)
        used = [] if archive is None else [f"printf '%s\\n' {archive.digest} > {INTERNAL}/digest"]
        if archive is not None and touch:
            used.append(f"touch -c {remote_path(s.root)}/code/{archive.name}")
        return "\n".join([
            f"cd {run} || exit {_SETUP_FAILED}",
            f"printf '%s\\n' {shlex.quote(slot.node.name)} > {INTERNAL}/node", *used,
            f"exec > {INTERNAL}/stdout 2> {INTERNAL}/stderr",
            *(f"export {k}={v}" for k, v in env),
            *s.setup,
            command,
            f"echo $? > {INTERNAL}/ecode",  # one write: readers wait for it to be non-empty
        ]) + "\n"

    def _environment(self, slot: Slot, execution: Execution) -> list[tuple[str, str | None]]:
        """The script's environment, in order (later ones win); None for the paths, which
        the node knows (`~` is its $HOME)."""
        env: list[tuple[str, str | None]] = [
            ("RUNAWAY_UUID", execution.uuid),
            ("RUNAWAY_REMOTE", self.settings.profile),
            ("RUNAWAY_PATH", None),
            ("RUNAWAY_NODES", " ".join(n.name for n in slot.allocation.nodes)),
            ("RUNAWAY_NODE_ID", slot.node.name),
            ("RUNAWAY_HANDLES", " ".join(slot.node.handles)),
            ("RUNAWAY_HANDLE_ID", slot.handle),
            ("RUNAWAY_ARGUMENTS", execution.arguments),
            ("RUNAWAY_SCRIPT_PATH", None),
            ("RUNAWAY_PWD", None),
        ]
        if slot.node.gpus:
            env.append(("CUDA_VISIBLE_DEVICES", slot.handle))
        return env + [*self.settings.env, *execution.env]

    async def kill(self, shell: Shell, execution: Execution) -> None:
        """Kill the script's process group: SIGTERM, then SIGKILL after a grace period."""
        polls = max(1, int(self.settings.kill_grace / 0.1))
        command = (f"cd {self.run_dir(execution)} 2>/dev/null || exit 0; "
                   f"pid=$(cat {INTERNAL}/pid 2>/dev/null) || exit 0; [ -n \"$pid\" ] || exit 0; "
                   "kill -TERM -- -$pid 2>/dev/null || exit 0; "
                   f"for i in $(seq {polls}); do kill -0 -- -$pid 2>/dev/null || break; "
                   "sleep 0.1; done; kill -KILL -- -$pid 2>/dev/null; true")
        try:
            await shell.run(command)
            self.discard(shell, execution)
        except SSHError as error:
            log.warning("could not kill %s on %s: %s", execution.uuid, shell.name, error)

    def discard(self, shell: Shell, execution: Execution) -> None:
        """Queue the run folder for removal (unless leave=everything); `sweep` removes them
        in batches, one command per host rather than one per execution."""
        if self.settings.leave != "everything":
            self._trash.setdefault(shell, []).append(execution.uuid)

    async def sweep(self, removing: bool = True) -> None:
        """Remove the queued run folders now: through the node's agent when it runs (it keeps
        them to hold later runs), else with `rm`, unless not `removing` (those wait for a
        sweep that removes: a command on the node costs more than a frame to its agent)."""
        trash, self._trash = self._trash, {}
        root = self.settings.root
        removals = []
        for shell, runs in trash.items():
            if self.agents is not None and self.agents.discard(
                    shell, [f"{root}/runs/{run}" for run in runs]):
                continue  # the frame leaves after the barrier (the agent's flush calls it)
            if removing:
                removals.append((shell, runs))
            else:
                self._trash.setdefault(shell, []).extend(runs)
        if removals:
            self.barrier()
        for shell, runs in removals:
            folders = [_run_dir(root, run) for run in runs]
            for start in range(0, len(folders), 200):
                try:
                    await shell.run("rm -rf " + " ".join(folders[start:start + 200]))
                except SSHError as error:
                    log.warning("could not remove run folders on %s: %s", shell.name, error)


def _run_dir(root: str, run: str) -> str:
    """A run folder's path in shell syntax (the agent takes `<root>/runs/<run>` as it is)."""
    return f"{remote_path(root)}/runs/{shlex.quote(run)}"


@attrs.frozen
class _Prepared:
    rules: IgnoreRules
    script: str  # relative to the code folder
    runner: tuple[str, ...] | LaunchError  # the interpreter of a script not executable


def _result(execution: Execution, record: dict[str, bytes], node: str, slot: str | None,
            started: float) -> Result:
    ecode_text = record.get("ecode", b"").strip()
    finished = clock.now()
    if not ecode_text.lstrip(b"-").isdigit():
        return Result(execution, State.LOST, node=node, slot=slot, output=execution.output,
                      started=started, finished=finished,
                      message="the script ended without recording an exit code")
    ecode = int(ecode_text)
    return Result(execution, State.COMPLETED if ecode == 0 else State.FAILED, ecode=ecode,
                  node=node, slot=slot, output=execution.output, started=started,
                  finished=finished, stdout=_tail(record.get("stdout", b"")),
                  stderr=_tail(record.get("stderr", b"")))


def _tail(data: bytes) -> str:
    return data[-TAIL:].decode(errors="replace")


def _legacy_execution(lines: tuple[str, ...], args: tuple[str, ...]) -> str:
    """A legacy profile's `execution` commands, with `$RUNAWAY_ARGUMENTS` expanded to the
    arguments as separate, verbatim words (the original split them on spaces)."""
    argv = "RUNAWAY_ARGV=(" + " ".join(map(shlex.quote, args)) + ")"
    words = '"${RUNAWAY_ARGV[@]}"'
    body = [line.replace("${RUNAWAY_ARGUMENTS}", words).replace("$RUNAWAY_ARGUMENTS", words)
            for line in lines]
    return "\n".join([argv, *body])


def _drop(_: bytes) -> None:
    return None


def _executable(script: Path) -> bool:
    return os.access(script, os.X_OK)


_SHELL_SUFFIXES = ("", ".sh", ".bash")


def interpreter(script: Path) -> list[str]:
    """How to run a script without its execute bit: its `#!` line's interpreter, else bash
    for shell scripts. LaunchError for anything else (a .py under bash is a syntax error)."""
    try:
        with open(script, "rb") as f:
            first = f.readline(4096).decode(errors="replace")
    except OSError as error:
        raise LaunchError(f"{script}: cannot read: {error.strerror}") from None
    if first.startswith("#!") and first[2:].split():
        return first[2:].split()
    if script.suffix in _SHELL_SUFFIXES:
        return ["bash"]
    raise LaunchError(f"{script}: not executable and has no #! line: chmod +x it and add a #! "
                      "line, or run it through an interpreter script")


def check_runnable(script: Path) -> None:
    """One clear error before anything starts: the script is missing or cannot be run."""
    if not script.is_file():
        raise LaunchError(f"{script}: no such script")
    if not _executable(script):
        interpreter(script)
