"""The node keeper: the parent of the scripts a node agent starts, so that an execution costs
one process on the node (the script) and still loses nothing when the agent dies. `Keeper` is
the process; `Handle`, the agent's side of it.

The agent (node_agent.py) talks to the driver; the keeper only starts scripts, each in its
own session, waits for them, and writes each one's exit code into its run folder, as the
last line of the shell wrapper does. It has no channel to lose: when the agent ends (killed,
or its channel gone), the keeper's order pipe ends, and the keeper goes on waiting for the
scripts it started, writes their exit codes and exits after the last one. The driver then
reattaches to their run folders as after any lost connection.

An exit code is written before its process is reaped (waitid with WNOWAIT): a reader that
finds the process gone (`kill -0`) finds its exit code already there.

Shipped next to the agent, standard library only; Linux (os.waitid). The agent forks its
first keeper as it starts, before it has threads: a child that has everything imported costs
about a millisecond, a second interpreter 20 ms of CPU on each node as every batch starts. A
keeper started later (the first died) is this file run with the agent's python3. Either way
its process name (`ps -o comm`, `pgrep`) is `runaway-keeper`, the agent's `runaway-agent`.
Protocol: JSON lines.
  agent -> keeper  {"id", "cwd", "argv", "env": {name: value}} to run argv directly, writing
                   its exit code; or {"id", "cwd", "wrapper"} to run a wrapper script under bash
                   (it writes the exit code itself)
  keeper -> agent  {"id", "pid"} once started (its pid file written); then
                   {"id", "status", "alone"} when it ended (`alone`: nothing of it runs on)
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import functools
import json
import os
import shutil
import signal
import sys
import threading

INTERNAL = ".orchestra"  # a run folder's own files: pid, node, digest, stdout, stderr, ecode
SPAWN = hasattr(os, "posix_spawnp") and hasattr(os, "POSIX_SPAWN_OPEN")
_NULL_IN = (getattr(os, "POSIX_SPAWN_OPEN", 0), 0, os.devnull, os.O_RDONLY, 0)
_NULL_OUT = (getattr(os, "POSIX_SPAWN_OPEN", 0), 1, os.devnull, os.O_WRONLY, 0)
_NULL_ERR = (getattr(os, "POSIX_SPAWN_OPEN", 0), 2, os.devnull, os.O_WRONLY, 0)
_OUTPUT = os.O_WRONLY | os.O_CREAT | os.O_TRUNC
_DEFAULT_SIGNALS = tuple(getattr(signal, name) for name in ("SIGPIPE", "SIGXFSZ")
                         if hasattr(signal, name))  # Python ignores them; scripts must not


def write_bytes(path: str, data: bytes, mode: int | None = None) -> None:
    """Write a whole file with a few system calls (several per execution, on both sides:
    layers above them cost more than the writing); `mode`, when given, exactly (no umask)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC,
                 0o644 if mode is None else 0o600)
    try:
        _write_all(fd, data)
        if mode is not None:
            os.fchmod(fd, mode)
    finally:
        os.close(fd)


_READ = 1 << 20  # bytes asked of each read


def read_bytes(path: str) -> bytes | None:
    """A whole file; None when there is none. Opened, not looked up first: the driver reads
    several per execution that most folders do not have."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)  # not open(): half the CPU of a read
    except (FileNotFoundError, NotADirectoryError):
        return None
    chunks = []
    try:
        while True:  # a short read of a regular file is its end: no read to see b""
            chunks.append(os.read(fd, _READ))
            if len(chunks[-1]) < _READ:
                break
    except IsADirectoryError:
        return None
    finally:
        os.close(fd)
    return chunks[0] if len(chunks) == 1 else b"".join(chunks)


NEXT = ".next"  # a record file's spare: kept, blocks and all, to be written in place


def write_in_place(path: str, data: bytes) -> None:
    """Write a whole small file over the old one's blocks. Truncating a file and writing it
    again frees its block and takes another: 110-130 us of CPU on the test machine's disk,
    against 16 in place, for each of several files per execution."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC, 0o644)
    try:
        _write_all(fd, data)
        os.ftruncate(fd, len(data))
    finally:
        os.close(fd)


def publish(path: str, data: bytes) -> None:
    """A record file (pid, ecode) appears whole, at once: written into `<path>.next`, the
    spare a reused run folder keeps of it, then renamed (45 us, against 110-130 to truncate
    and rewrite it)."""
    write_in_place(path + NEXT, data)
    os.replace(path + NEXT, path)


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


def script_fd(data: bytes) -> int:
    """A memfd holding `data` at offset 0, above fd 3: duplicating a descriptor onto itself
    does not clear its close-on-exec flag before glibc 2.29, and bash must open fd 3."""
    made = os.memfd_create("runaway-wrapper", os.MFD_CLOEXEC)
    try:
        fd = fcntl.fcntl(made, fcntl.F_DUPFD_CLOEXEC, 10)
    finally:
        os.close(made)
    try:
        _write_all(fd, data)
        os.lseek(fd, 0, os.SEEK_SET)
    except OSError:
        os.close(fd)
        raise
    return fd


def wrapper_source(script: str) -> bytes:
    """The bash wrapper's script as `spawn_wrapper` runs it: it closes fd 3 first thing."""
    return b"exec 3<&-\n" + script.encode()


def spawn_wrapper(fd: int) -> int:
    """Start bash on the script readable at `fd` (offset 0), in its own session, with the
    default signals and /dev/null for stdin, stdout and stderr (the script redirects them);
    its pid. The caller closes `fd`."""
    return os.posix_spawnp("bash", ["bash", "/dev/fd/3"], os.environ,
                           file_actions=(_NULL_IN, _NULL_OUT, _NULL_ERR,
                                         (os.POSIX_SPAWN_DUP2, fd, 3)),
                           setsid=True, setsigdef=_DEFAULT_SIGNALS)


def _command(name: str, env: dict) -> str:
    """What posix_spawnp would run, but looked up in the script's PATH (the profile may set
    it), as the wrapper's bash does, not the keeper's; found once per name and PATH, as bash
    hashes commands."""
    if "/" in name:
        return name
    found = _found(name, env.get("PATH", os.defpath))
    if found is None:
        raise FileNotFoundError(errno.ENOENT, "command not found", name)
    return found


@functools.lru_cache(maxsize=64)
def _found(name: str, path: str):
    return shutil.which(name, path=path)


def _close_inherited() -> None:
    """Descriptors the agent was given by whatever started it reach no script."""
    try:
        fds = [int(fd) for fd in os.listdir("/proc/self/fd")]
    except OSError:
        return
    for fd in fds:
        if fd > 2:
            with contextlib.suppress(OSError):
                os.close(fd)


def _code(ended) -> int:
    """What `$?` says in bash: the exit status, or 128 + the signal that killed it."""
    return ended.si_status if ended.si_code == os.CLD_EXITED else 128 + ended.si_status


class Keeper:
    def __init__(self, out) -> None:
        self.out = out
        self.lock = threading.Lock()
        self.changed = threading.Condition(self.lock)
        self.runs: dict = {}  # pid -> (id, run folder, writes the exit code)
        self.closing = False
        self.environ = dict(os.environ)  # the scripts' base environment: the keeper's own

    def report(self, message: dict) -> None:
        try:
            self.out.write(json.dumps(message).encode() + b"\n")
            self.out.flush()
        except (OSError, ValueError):
            pass  # the agent is gone: the run folders keep everything

    def start(self, order: dict) -> None:
        """Start one script in its own session (the spawn needs its folder as the current
        one: only this thread changes it, the reaper uses whole paths). Whatever goes wrong
        is this run's failure, never the keeper's: the others' exit codes depend on it."""
        ident, cwd = order.get("id"), order.get("cwd", "")
        internal = os.path.join(cwd, INTERNAL)
        direct = "argv" in order
        with self.lock:
            try:
                os.chdir(cwd)
                pid = self._spawn(order, internal) if direct else self._wrap(order["wrapper"])
            except Exception as error:  # said in the run folder, as bash would say it
                pid = 0
                if direct or "wrapper" in order:  # 127 for a missing command, else 126
                    code = 127 if getattr(error, "errno", None) == errno.ENOENT else 126
                    why = getattr(error, "strerror", None) or str(error)
                    with contextlib.suppress(OSError):
                        write_bytes(os.path.join(internal, "stderr"),
                               f"runaway: {order.get('argv', ['bash'])[0]}: {why}\n".encode())
                        publish(os.path.join(internal, "ecode"), f"{code}\n".encode())
            else:
                self.runs[pid] = (ident, cwd, direct)
                with contextlib.suppress(OSError):  # before its ecode: the reaper waits
                    publish(os.path.join(internal, "pid"), f"{pid}\n".encode())
                self.changed.notify_all()
        if not pid:
            self.report({"id": ident, "status": -1, "alone": True})

    def _spawn(self, order: dict, internal: str) -> int:
        env = {**self.environ, **order.get("env", {})}
        actions = [_NULL_IN,
                   (os.POSIX_SPAWN_OPEN, 1, os.path.join(internal, "stdout"), _OUTPUT, 0o644),
                   (os.POSIX_SPAWN_OPEN, 2, os.path.join(internal, "stderr"), _OUTPUT, 0o644)]
        argv = list(order["argv"])
        try:
            return os.posix_spawn(_command(argv[0], env), argv, env, file_actions=actions,
                                  setsid=True, setsigdef=_DEFAULT_SIGNALS)
        except OSError as error:
            if error.errno != errno.ENOEXEC:
                raise
            # executable, no #! line: bash runs it as a bash script, so do we
            return os.posix_spawn(_command("bash", env), ["bash", *argv], env,
                                  file_actions=actions, setsid=True,
                                  setsigdef=_DEFAULT_SIGNALS)

    def _wrap(self, script: str) -> int:
        fd = script_fd(wrapper_source(script))
        try:
            return spawn_wrapper(fd)
        finally:
            os.close(fd)

    def reap(self) -> None:
        """Wait for each script; write its exit code before reaping it; say so."""
        while True:
            with self.lock:
                while not self.runs:
                    if self.closing:
                        os._exit(0)
                    self.changed.wait()
            try:
                ended = os.waitid(os.P_ALL, 0, os.WEXITED | os.WNOWAIT)
            except ChildProcessError:
                continue
            if ended is None:
                continue
            pid = ended.si_pid
            with self.lock:
                ident, cwd, direct = self.runs.pop(pid, (None, None, False))
            if direct:  # its folder may be gone, or the disk full: it is lost, not the keeper
                with contextlib.suppress(OSError):
                    publish(os.path.join(cwd, INTERNAL, "ecode"), f"{_code(ended)}\n".encode())
            with contextlib.suppress(ChildProcessError):
                os.waitpid(pid, 0)
            try:
                os.killpg(pid, 0)
                alone = False  # something it started runs on: its folder is not reused
            except ProcessLookupError:
                alone = True
            except OSError:
                alone = False
            if ident is not None:
                self.report({"id": ident, "status": 0, "alone": alone})


class Handle:
    """One keeper process as its agent sees it: the runs it watches. `send` takes a frame
    for the driver; `ended(id, run, alone, *more)` is called as each run ends, within
    `held()`, which holds back the frames sent meanwhile until it is left."""

    def __init__(self, path: str, send, ended, held=contextlib.nullcontext,
                 fork: bool = False) -> None:
        """`fork`: a child of this process rather than `path` run anew, where that is safe
        (no other thread: a fork copies no thread but the caller, and no lock it holds)."""
        self.send, self.ended, self.held = send, ended, held
        self.lock = threading.Lock()
        self.pending: dict = {}  # id -> (run folder, bytes of code, ignore patterns)
        self.dead = False
        orders, keeper_in = os.pipe()
        keeper_out, reports = os.pipe()
        try:
            if fork and hasattr(os, "fork") and threading.active_count() == 1:
                if os.fork() == 0:
                    _forked(orders, reports)
            else:
                os.posix_spawnp(sys.executable, [sys.executable, "-u", "-S", path], os.environ,
                                file_actions=((os.POSIX_SPAWN_DUP2, orders, 0),
                                              (os.POSIX_SPAWN_DUP2, reports, 1), _NULL_ERR),
                                setsid=True)
        finally:
            os.close(orders)
            os.close(reports)
        self.pipe = os.fdopen(keeper_in, "wb")
        threading.Thread(target=self._read, args=(keeper_out,), daemon=True).start()

    @staticmethod
    def usable() -> bool:
        return SPAWN and all(hasattr(os, name) for name in ("waitid", "memfd_create"))

    def start(self, ident: str, run: str, start: dict, more: tuple) -> bool:
        """Hand it a run; False when it has died (start another)."""
        with self.lock:
            if self.dead:
                return False
            self.pending[ident] = (run, *more)
        try:
            self.pipe.write(json.dumps(dict(start, id=ident, cwd=run)).encode() + b"\n")
            self.pipe.flush()
        except (BrokenPipeError, ValueError):
            pass  # it died: its reader says so for every run it had, this one too
        return True

    def _read(self, reports: int) -> None:
        """Each read takes every report there is: the runs that ended meanwhile are sent on
        together (`held`), one write and one packet for all, not one each."""
        rest = b""
        while True:
            try:
                chunk = os.read(reports, 1 << 16)
            except InterruptedError:
                continue
            if not chunk:
                break
            *lines, rest = (rest + chunk).split(b"\n")
            with self.held():
                for line in lines:
                    report = json.loads(line)
                    ident = report["id"]
                    with self.lock:
                        watched = self.pending.pop(ident, None)
                    if watched is not None:
                        run, size, patterns = watched
                        self.ended(ident, run, report["alone"], size, patterns)
        os.close(reports)
        with self.lock:  # it died: what it watched is the driver's to reattach to
            self.dead, lost, self.pending = True, list(self.pending), {}
        for ident in lost:
            self.send({"op": "lost", "id": ident, "message": "its node keeper died"})

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.pipe.close()


def name_process(name: bytes) -> None:
    """What `ps -o comm` and `pgrep` call this process (Linux): the agent and the keeper it
    forks share a command line, not a name."""
    with contextlib.suppress(OSError):
        with open("/proc/self/comm", "wb") as comm:
            comm.write(name)


def serve(orders, reports) -> None:
    """Be the keeper, on the orders and reports pipes as fds 0 and 1: never returns."""
    _close_inherited()
    name_process(b"runaway-keeper")
    keeper = Keeper(reports)
    threading.Thread(target=keeper.reap, daemon=True).start()
    for line in orders:
        try:
            order = json.loads(line)
        except ValueError:
            continue  # not from our agent
        keeper.start(order)
    with keeper.lock:  # the agent is gone: the reaper ends the process after the last script
        keeper.closing = True
        keeper.changed.notify_all()
    threading.Event().wait()


def _forked(orders: int, reports: int) -> None:
    """The child of the agent's fork: its own session, the pipes as stdin and stdout, fresh
    file objects on them (the agent's may hold buffered data), then the keeper."""
    try:
        os.setsid()
        os.dup2(orders, 0)
        os.dup2(reports, 1)
        null = os.open(os.devnull, os.O_WRONLY)
        os.dup2(null, 2)
        serve(os.fdopen(0, "rb"), os.fdopen(1, "wb"))
    except BaseException:
        os._exit(1)  # never back into the agent's code
    os._exit(0)


if __name__ == "__main__":
    try:
        serve(sys.stdin.buffer, sys.stdout.buffer)
    except KeyboardInterrupt:
        os._exit(0)
