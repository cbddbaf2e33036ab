"""The driver's side of the node agents (`node_agent.py`): one per node, started over one
channel on first use, restarted when it dies, given up on (with one event) when it cannot run.

An execution handed to an agent costs one frame each way on a channel already open, instead
of a channel, a round trip and seven helper processes. When the agent or its channel dies,
every execution it was watching raises AgentLost, and the launcher reattaches to the run
folder over a plain channel as it does after any lost connection: the contract is the same.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import logging
import shlex
from pathlib import Path
from typing import Callable

import anyio

from liborchestra import events, node_agent, node_keeper, node_spares
from liborchestra.errors import (
    CodeMissing,
    ConnectionLostError,
    LaunchError,
    OrchestraError,
    SSHError,
)
from liborchestra.shell import Pipe, Shell
from liborchestra.transfer import ResultSink, remote_path

log = logging.getLogger(__name__)
SOURCES = {Path(module.__file__).name: Path(module.__file__).read_bytes()
           for module in (node_agent, node_keeper, node_spares)}  # shipped as one folder
DIGEST = hashlib.sha256(b"".join(name.encode() + b"\0" + source + b"\0"
                                 for name, source in SOURCES.items())).hexdigest()
DEATHS = 3  # an agent that dies this often within DEATH_WINDOW seconds is given up on
DEATH_WINDOW = 60.0
START_TIMEOUT = 60.0
_CHUNK = 1 << 20
LEAVE_TIMEOUT = 30.0  # seconds an agent has to remove its folders at the end
FLUSH_DELAY = 0.002  # seconds frames to the agent wait for others (1.4 runs a write at 2 ms on
# the test bed's busiest batches; a turn of the event loop alone gave 1.2)
# run by the node's python3 as `-c`, with the agent's path: says what is missing (a python3
# recent enough, or the agent's files), else runs the agent (-B: no bytecode written there).
# Python 2 reads it too (`agent:` may name any python): it says `version`.
_IMPORT = """try:
 import node_agent
except Exception as error:
 import json; why = {"op": "absent", "missing": "agent", "why": repr(error)}
 sys.stdout.write(json.dumps(why) + "\\n"); sys.exit(0)
"""  # a file that does not import is installed again (once); one cut short, by its size
_BOOTSTRAP = (  # one line: a csh login shell reads it too
    "import os, sys; folder = os.path.dirname(sys.argv[1]); sys.path.insert(0, folder); "
    "missing = 'version' if sys.version_info < (3, 8) else '' if all(os.path.isfile(path) "
    "and os.path.getsize(path) == size for path, size in ((os.path.join(folder, name), size) "
    f"for name, size in {tuple((name, len(source)) for name, source in SOURCES.items())!r})) "
    "else 'agent'; missing and sys.stdout.write("
    "'{\"op\": \"absent\", \"missing\": \"%s\"}\\n' % missing); missing and sys.exit(0); "
    f"exec({_IMPORT!r}); node_agent.entry()"
)


class AgentLost(OrchestraError):
    """The agent (or its channel) ended before this execution's results came back; the run
    folder still has everything."""


class Record:
    """The results of a run that made no file but its small stdout, stderr and ecode (sent
    inline by the agent): a ResultSink with nothing to unpack."""

    def __init__(self, record: dict[str, bytes]) -> None:
        self.record = record

    def unpack(self, dest: object) -> dict[str, bytes]:
        return self.record


class Agents:
    """The node agents of one engine, one per node shell."""

    def __init__(self, root: str, python: str, emit: Callable[[events.Event], None],
                 barrier: Callable[[], None] = lambda: None) -> None:
        self.root, self.python, self.emit, self.barrier = root, python, emit, barrier
        self._clients: dict[Shell, _Client] = {}
        self._tg: anyio.abc.TaskGroup | None = None
        self._serving = anyio.Event()

    async def serve(self) -> None:
        """Host the agents' reading tasks until cancelled (the engine's housekeeping)."""
        async with anyio.create_task_group() as tg:
            self._tg = tg
            self._serving.set()
            await anyio.sleep_forever()

    async def run(self, shell: Shell,
                  order: Callable[[bool], dict]) -> ResultSink | Record | None:
        """Run one execution through `shell`'s agent: its results, or None when this node
        has no agent (use the shell wrapper). `order(direct)` makes the order: `direct` when
        the agent runs the script itself, without a wrapper. Raises AgentLost, or
        LaunchError for a run folder the agent could not prepare."""
        if not self._serving.is_set():  # waiting on a set event still costs a turn of the loop
            await self._serving.wait()
        return await self._client(shell).run(order)

    def warm(self, shell: Shell) -> None:
        """Start `shell`'s agent now, not at its first run (its node was just granted, with
        work waiting): the nodes' agents start together, while the code is looked for. A
        node that cannot be reached is said so by its first run, which tries again."""
        client = self._client(shell) if self._serving.is_set() else None
        if client is not None and client.pipe is None and not client.unavailable:
            client.start()

    def _client(self, shell: Shell) -> _Client:
        client = self._clients.get(shell)
        if client is None:
            client = self._clients[shell] = _Client(shell, self.root, self.python, self.emit,
                                                    self._tg, self.barrier)
        return client

    def discard(self, shell: Shell, dirs: list[str]) -> bool:
        """Hand finished run folders to `shell`'s agent (it keeps them to hold later runs);
        False when no agent runs there now."""
        client = self._clients.get(shell)
        if client is None or client.pipe is None:
            return False
        client.send({"op": "discard", "dirs": dirs})
        return True

    async def leave(self, timeout: float = LEAVE_TIMEOUT) -> None:
        """End every agent's input and wait until each has left: it removes its spare folders
        and the last ones discarded as it goes. Before the allocations go, which would kill
        an agent in an srun step midway and leave the folders behind."""
        leaving = [client for client in self._clients.values() if client.leave()]
        with anyio.move_on_after(timeout):
            for client in leaving:
                await client.left.wait()


class _Client:
    def __init__(self, shell: Shell, root: str, python: str,
                 emit: Callable[[events.Event], None], tg: anyio.abc.TaskGroup,
                 barrier: Callable[[], None]) -> None:
        self.shell, self.root, self.emit, self._tg = shell, root, emit, tg
        self.barrier = barrier  # Engine.barrier: before each write
        self.python = shlex.quote(python)
        self.pipe: Pipe | None = None
        self.unavailable = ""  # why this node runs without an agent, once given up
        self._starting: anyio.Event | None = None
        self._pending: dict[str, asyncio.Future[ResultSink | Record]] = {}
        self._deaths: list[float] = []
        self._unreachable: SSHError | None = None  # why the last start could not reach the node
        self.direct = False  # the agent runs scripts without a wrapper
        self._frames: list[bytes] = []  # written together, FLUSH_DELAY after the first
        self._sent: list[str] = []  # the ids of the runs among them
        self.leaving = False  # told to leave: its end of output is no problem
        self.left = anyio.Event()  # set when its channel has closed

    def send(self, frame: dict) -> None:
        """Queue a frame for the agent. The frames of the next FLUSH_DELAY leave in one write:
        each write is an SSH packet (two, with the countermeasure packet asyncssh puts before
        each; four through a ProxyJump), once the largest part of the driver's cost per run."""
        if not self._frames:
            asyncio.get_running_loop().call_later(FLUSH_DELAY, self._flush)
        self._frames.append(json.dumps(frame).encode() + b"\n")
        if frame.get("op") == "run":
            self._sent.append(frame["id"])

    def leave(self) -> bool:
        """Send what is queued, then the end of input; False when no agent runs here."""
        if self.pipe is None:
            return False
        self.leaving = True
        self._flush()
        if self.pipe is not None:
            self.pipe.write_eof()
        return True

    def _flush(self) -> None:
        if not self._frames:  # sent already, by `leave`
            return
        frames, self._frames = b"".join(self._frames), []
        sent, self._sent = self._sent, []
        try:
            if self.pipe is None:
                raise ConnectionLostError("its channel is closed")
            self.barrier()
            self.pipe.write(frames)
        except Exception as error:  # e.g. a journal that cannot commit: nothing is sent
            failed = AgentLost(f"{self.shell.name}: node agent unreachable: {error}") \
                if isinstance(error, ConnectionLostError) else error
            for ident in sent:
                future = self._pending.get(ident)
                if future is not None and not future.done():
                    future.set_exception(failed)

    async def run(self, build: Callable[[bool], dict]) -> ResultSink | Record | None:
        pipe = await self._up()
        if pipe is None:
            return None
        order = build(self.direct)
        future: asyncio.Future[ResultSink | Record] = asyncio.get_running_loop().create_future()
        self._pending[order["id"]] = future
        try:
            self.send(order)
            return await future
        finally:
            self._pending.pop(order["id"], None)

    async def _up(self) -> Pipe | None:
        """The running agent's pipe (starting it if needed); None when this node has none.
        Raises SSHError when the node could not be reached to start it: that is the node's
        fault (the execution is lost and the node quarantined), not the agent's."""
        while self.pipe is None and not self.unavailable:
            starting = self.start()
            await starting.wait()
            if self.pipe is None and self._unreachable is not None:
                raise self._unreachable
        return self.pipe

    def start(self) -> anyio.Event:
        """Start the agent unless it is starting; the event is set once it is up (or could
        not start)."""
        if self._starting is None:
            self._starting, self._unreachable = anyio.Event(), None
            self.left = anyio.Event()  # this start's: set when its channel closes
            self._tg.start_soon(self._serve, self._starting)
        return self._starting

    async def _serve(self, started: anyio.Event) -> None:
        reason = ""
        try:
            for attempt in range(2):
                async with self.shell.open(self._command()) as pipe:
                    with anyio.fail_after(START_TIMEOUT):
                        frame = await _hello(pipe)
                    if frame["op"] == "hello":
                        self.pipe, self.direct = pipe, bool(frame.get("direct"))
                        self.emit(events.AgentStarted(self.shell.name, str(frame.get("python")),
                                                      int(frame.get("pid", 0))))
                        started.set()
                        await self._read(pipe)
                missing = frame.get("missing")
                if missing == "agent" and attempt == 0:
                    with anyio.fail_after(START_TIMEOUT):
                        await self._install()
                    continue
                if missing in ("python", "version"):
                    self._give_up(f"no {self.python} on the node" if missing == "python"
                                  else f"the node's {self.python} is older than 3.8")
                    return
                why = frame.get("why") or f"still missing under {self.root}/agent"
                raise LaunchError(f"the node agent cannot start ({missing}: {why})")
        except SSHError as error:
            if self.pipe is not None:  # it ran, then its connection went
                reason = str(error)
            else:
                self._unreachable = error
        except (OrchestraError, OSError, ValueError, TimeoutError) as error:
            reason = str(error) or type(error).__name__
        finally:
            up, self.pipe, self._starting = self.pipe is not None, None, None
            started.set()
            self.left.set()
            if self.leaving:
                reason = ""
            if up or reason:
                self._ended(reason)

    def _ended(self, reason: str) -> None:
        """Fail what this agent was watching (each reattaches); give up after many deaths."""
        lost = AgentLost(f"{self.shell.name}: node agent ended: {reason or 'closed'}")
        for future in self._pending.values():
            if not future.done():
                future.set_exception(lost)
        if self.unavailable:
            return
        now = anyio.current_time()
        self._deaths = [t for t in self._deaths if now - t < DEATH_WINDOW] + [now]
        if len(self._deaths) >= DEATHS:
            self._give_up(f"the node agent ended {DEATHS} times in {DEATH_WINDOW:.0f} s "
                          f"(last: {reason or 'closed'})")
        elif reason:
            self.emit(events.ConnectionProblem(self.shell.name, str(lost)))

    def _give_up(self, reason: str) -> None:
        self.unavailable = reason
        self.emit(events.AgentUnavailable(self.shell.name, reason))

    def _folder(self) -> str:
        return f"{remote_path(self.root)}/agent/{DIGEST}"

    def _command(self) -> str:
        """One command starts the agent, or says in one frame what the node lacks: its
        python3 (or a recent enough one), or the agent's files (installed, then started
        again). One channel and one python3 per start, not a probe before it; without
        `site` (-S), which the standard library does not need: 1.5 ms of each start."""
        return (f"command -v {self.python} >/dev/null 2>&1 || {{ echo "
                "'{\"op\": \"absent\", \"missing\": \"python\"}'; exit 0; }; "
                f"exec {self.python} -u -B -S -c {shlex.quote(_BOOTSTRAP)} "
                f"{self._folder()}/node_agent.py")

    async def _install(self) -> None:
        """Upload the agent with its siblings, once per content hash and filesystem."""
        folder = self._folder()
        for name, source in SOURCES.items():
            path = f"{folder}/{name}"
            temp = f"{path}.$(hostname).$$"  # nodes that share the folder install at once
            done = await self.shell.run(f"set -e; mkdir -p {folder}; cat > {temp}; "
                                        f"mv -f {temp} {path}", input=source)
            if done.returncode != 0:
                raise LaunchError(f"could not install the node agent under {self.root}/agent: "
                                  f"{done.stderr.decode(errors='replace').strip()}")

    async def _read(self, pipe: Pipe) -> None:
        while True:
            line = await pipe.readline()
            if not line:
                raise ConnectionLostError("its output ended")
            frame = json.loads(line)
            future = self._pending.get(frame.get("id", ""))
            if future is not None and future.done():
                future = None  # cancelled meanwhile: its results are read and dropped
            sink = ResultSink() if future is not None and frame.get("size") else None
            left = int(frame.get("size", 0))
            if left:
                left += 1  # the newline after a payload
            while left > 0:
                chunk = await pipe.readexactly(min(left, _CHUNK))
                left -= len(chunk)
                if sink is not None:
                    sink.write(chunk[:len(chunk) - 1] if left == 0 else chunk)
            if future is None:
                continue  # a start notice, or a run this driver no longer watches
            if "record" in frame:
                future.set_result(Record({k: base64.b64decode(v)
                                          for k, v in frame["record"].items()}))
            elif sink is not None:
                future.set_result(sink)
            elif frame.get("op") == "lost":
                future.set_exception(AgentLost(f"{self.shell.name}: {frame.get('message', '')}"))
            elif frame.get("op") == "failed" and frame.get("code_missing"):
                future.set_exception(CodeMissing(
                    f"{self.shell.name}: the code archive is gone ({frame.get('message', '')})"
                    "; it is sent again"))
            elif frame.get("op") == "failed":
                future.set_exception(LaunchError(
                    f"{self.shell.name}: could not prepare the run folder of {frame['id']}: "
                    f"{frame.get('message', '')}"))


async def _hello(pipe: Pipe) -> dict:
    """The agent's first frame; lines a login script printed before it are skipped."""
    for _ in range(1000):
        line = await pipe.readline()
        if not line:
            raise ConnectionLostError("the node agent exited at start")
        try:
            frame = json.loads(line)
        except ValueError:
            continue
        if isinstance(frame, dict) and frame.get("op") == "absent":
            return frame  # what the node lacks to run it
        if isinstance(frame, dict) and frame.get("op") == "hello":
            if frame.get("protocol") != node_agent.PROTOCOL:
                raise LaunchError(f"node agent speaks protocol {frame.get('protocol')}, "
                                  f"not {node_agent.PROTOCOL}")
            return frame
    raise LaunchError("the node agent never said hello")
