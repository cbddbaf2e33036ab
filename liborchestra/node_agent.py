"""The node agent: one process per node and engine that prepares run folders, has its keeper
(node_keeper.py) start the scripts, and packs their results, so an execution costs one process
on the node (the script itself) instead of nine, and no SSH channel of its own.

This file is shipped to the node as it is, with node_keeper.py and node_spares.py (into one
folder per content hash, like the code), and run with the node's `python3` (3.8 or newer): the
standard library only, and nothing from liborchestra but those siblings. The driver imports it
too, for the protocol and the ignore rules (and node_keeper.py for the one file writer).

It keeps the run-folder contract of the shell wrapper: each run folder gets the code and
`.orchestra/{stdout,stderr,node,digest,pid}`, and `.orchestra/ecode` when the script ends,
written by the keeper (or by the bash wrapper, for profiles with setup lines; and where the
node is not Linux, the agent starts that wrapper itself). So when the agent or its channel
dies, nothing is lost: the script runs on in its own session, its keeper writes its exit code,
and the driver reattaches to the run folder the way it always has. Files are few on purpose
(creating one costs up to half a millisecond on some disks, and more on parallel
filesystems): the code is written from memory, finished run folders are reused
(node_spares.py), and what a run made is told from the code by its time (the code's files date
from 1970), not by a marker file.

Protocol, both ways: frames of one JSON header line, then `size` raw bytes and a newline when
size > 0 (the newline because `srun` holds a partial line back until one comes).
  driver -> agent  {"op": "run", "id", "dir", "archive", "ignore": [patterns], and either
                   "runner" (the wrapper script) or, when the agent said `direct`, "argv",
                   "env" ([name, value], value null for the paths the agent knows), "root",
                   "script", "node", "digest": run argv itself, no wrapper};
                   {"op": "discard", "dirs": [run folders whose results the driver holds]}
  agent -> driver  {"op": "hello", "protocol", "python", "pid", "direct"} once at start
                   (or, from the command that starts it, {"op": "absent", "missing":
                   "python" | "version" | "agent"}: the node lacks that to run it);
                   {"op": "failed", "id", "message", "code_missing": bool};
                   {"op": "lost", "id", "message"}: its keeper died, the driver reattaches;
                   {"op": "done", "id", "size"} followed by a tar of the results, or
                   {"op": "done", "id", "record": {name: base64}} when there are only the
                   run's small stdout, stderr and ecode
End of input ends the agent (its executions go on).
"""

from __future__ import annotations

import base64
import contextlib
import fcntl
import fnmatch
import json
import os
import shutil
import sys
import tarfile
import threading

if __package__:  # imported by the driver
    from liborchestra import node_keeper, node_spares
else:  # run on a node, from the folder it was shipped in with its siblings
    sys.dont_write_bytecode = True  # nothing written next to them
    import node_keeper
    import node_spares

# the names this file uses of its siblings'
INTERNAL, SPAWN, KeeperHandle = node_keeper.INTERNAL, node_keeper.SPAWN, node_keeper.Handle
script_fd, spawn_wrapper, wrapper_source = (node_keeper.script_fd, node_keeper.spawn_wrapper,
                                            node_keeper.wrapper_source)
write_bytes, write_in_place = node_keeper.write_bytes, node_keeper.write_in_place
SPARES, Spares, intact_file = node_spares.SPARES, node_spares.Spares, node_spares.intact_file

PROTOCOL = 5
_COPY = 1 << 20
INLINE = 64 * 1024  # bytes of stdout + stderr sent inline when the run made no other file
CODE_TIME = 1  # seconds since 1970: the code's files are older (0), what the run wrote newer
RUNNER_PIPE = 60 * 1024  # bytes: a wrapper script this short is read from a pipe, not a file


def ignored(patterns: list[str] | tuple[str, ...], relpath: str, is_dir: bool) -> bool:
    """The ignore-file rules: a pattern without `/` matches a name anywhere, one with `/` the
    path from the root, a trailing `/` folders only."""
    name = relpath.rsplit("/", 1)[-1]
    for pattern in patterns:
        dir_only = pattern.endswith("/")
        pattern = pattern.rstrip("/")
        if dir_only and not is_dir:
            continue
        if "/" in pattern:
            if fnmatch.fnmatchcase(relpath, pattern.lstrip("/")):
                return True
        elif fnmatch.fnmatchcase(name, pattern):
            return True
    return False


def result_files(run: str, patterns: list[str], members: dict | None = None,
                 known: set | None = None) -> list[str]:
    """What the results tar holds, as `find -newermt @1` chose it: the files and links the run
    made or changed (ignored ones and `.orchestra` pruned), then the record. One pass of
    scandir, a file's time looked at before the ignore rules: the code's files are walked on
    every execution (16 us each with os.walk and the rules first: a batch with 1,000 files of
    code ran at 61 executions/s on local, against 540 with two). With the code's `members`,
    the code files still as archived go into `known`, for the spare folder it may become."""
    since = CODE_TIME * 10**9
    chosen: list[str] = []
    _newer(run, "", patterns, since, chosen, members or {}, known)
    for name in ("stdout", "stderr", "ecode"):
        if os.path.lexists(os.path.join(run, INTERNAL, name)):
            chosen.append(INTERNAL + "/" + name)
    return chosen


def _newer(folder: str, rel_root: str, patterns: list[str], since: int,
           chosen: list[str], members: dict, known: set | None) -> None:
    """Into `chosen`, in os.walk's order (a folder's links to folders, then its files, then
    each subfolder in turn, by name): what is newer than `since` under `folder`."""
    try:
        with os.scandir(folder) as found:
            entries = sorted(found, key=lambda e: e.name)
    except OSError:  # unreadable, or gone: skipped, as os.walk skips it
        return
    below = []
    for entry in entries:
        if not entry.is_dir():  # files, links to files, broken links
            continue
        rel = entry.name if not rel_root else rel_root + "/" + entry.name
        if rel == INTERNAL or ignored(patterns, rel, True):
            continue
        if entry.is_symlink():  # not followed: a link is a file here
            if entry.stat(follow_symlinks=False).st_mtime_ns > since:
                chosen.append(rel)
            continue
        below.append((entry.path, rel))
    for entry in entries:
        if entry.is_dir():
            continue
        st = entry.stat(follow_symlinks=False)
        rel = entry.name if not rel_root else rel_root + "/" + entry.name
        if st.st_mtime_ns > since:
            if not ignored(patterns, rel, False):
                chosen.append(rel)
        elif known is not None and rel in members and intact_file(entry, st, members[rel]):
            known.add(rel)
    for path, rel in below:
        _newer(path, rel, patterns, since, chosen, members, known)


def _small_record(run: str, files: list[str]) -> dict | None:
    """stdout, stderr and ecode inline (base64) when the run made no other file and they are
    small; None otherwise (then they travel in the results tar)."""
    if any(not rel.startswith(INTERNAL + "/") for rel in files):
        return None
    record, size = {}, 0
    for rel in files:
        fd = os.open(os.path.join(run, rel), os.O_RDONLY | os.O_CLOEXEC)  # not open(): it
        try:  # asks whether the file is a terminal and where it stands, for every file
            data = os.read(fd, INLINE + 1)
        finally:
            os.close(fd)
        size += len(data)
        if size > INLINE:
            return None
        record[rel.split("/", 1)[1]] = base64.b64encode(data).decode()
    return record


def _expand(path: str) -> str:
    """`~` and relative paths from the home folder, as the shell wrapper reads them."""
    path = os.path.expanduser(path)
    return os.path.normpath(path if os.path.isabs(path) else
                            os.path.join(os.path.expanduser("~"), path))


class CodeMissing(Exception):
    """The code archive is gone (pruned or cleaned): the driver sends it again."""


class Code:
    """A code archive read once, then written out from memory into each run folder, as
    tarfile would extract it (modes and times kept) but without parsing the tar each time.
    None for archives that are large or hold other than folders, files and links."""

    LIMIT = 64 << 20  # bytes: larger archives are extracted from disk each time

    def __init__(self, members: list) -> None:
        self.members = members
        self.size = sum(len(data) for _, kind, _, data, _ in members if kind == "f")
        self.files = {os.path.normpath(name): (kind, mode, len(data or ""), mtime)
                      for name, kind, mode, data, mtime in members}  # what a spare may keep

    @classmethod
    def read(cls, path: str):
        if os.path.getsize(path) > cls.LIMIT:
            return None
        members = []
        with tarfile.open(path, mode="r:") as tar:
            for m in tar:
                if m.isdir():
                    members.append((m.name, "d", m.mode, None, m.mtime))
                elif m.isreg():
                    members.append((m.name, "f", m.mode, tar.extractfile(m).read(), m.mtime))
                elif m.issym():
                    members.append((m.name, "l", m.mode, m.linkname, m.mtime))
                else:
                    return None
        return cls(members)

    def write(self, run: str, intact: frozenset = frozenset()) -> None:
        """Into `run`; the `intact` files (a spare folder's, as the archive has them) are
        left as they are."""
        folders = []
        made = {run}
        for name, kind, mode, data, mtime in self.members:
            if intact and os.path.normpath(name) in intact:
                continue
            path = os.path.join(run, name)
            parent = os.path.dirname(path)
            if parent not in made:
                os.makedirs(parent, exist_ok=True)
                made.add(parent)
            if kind == "d":
                os.makedirs(path, exist_ok=True)
                made.add(path)
                folders.append((path, mode, mtime))
            elif kind == "f":
                write_bytes(path, data, mode)
                os.utime(path, (mtime, mtime))
            else:
                os.symlink(data, path)
                if os.utime in os.supports_follow_symlinks:  # its own time (0), as GNU tar's
                    os.utime(path, (mtime, mtime), follow_symlinks=False)
        for path, mode, mtime in reversed(folders):  # last, as files change their times
            os.chmod(path, mode)
            os.utime(path, (mtime, mtime))


def _extract(archive: str, run: str, code, intact: frozenset) -> None:
    if code is not None:
        code.write(run, intact)
        return
    with tarfile.open(archive, mode="r:") as tar:
        if hasattr(tarfile, "fully_trusted_filter"):  # our own archive, made by the driver
            tar.extractall(run, filter="fully_trusted")
        else:
            tar.extractall(run)


def _write(path: str, text: str) -> None:
    write_bytes(path, text.encode())


def _script_fd(data: bytes):
    """A file descriptor to read the wrapper's script from at offset 0 (the caller closes
    it), or None. A memfd where Linux has them: seekable, so bash reads the script in
    blocks (from a pipe it reads one byte per system call: 0.6-1.2 ms of CPU for a 2 KB
    script on the test machine), and in memory, so no file to create. Otherwise a pipe whose
    buffer holds it all (a user past the kernel's pipe quota gets 4 KiB pipes: writing more
    would wait for the wrapper, which reads on only as its script runs)."""
    try:
        return script_fd(data)
    except (AttributeError, OSError):  # not Linux, or refused: a pipe
        pass
    if len(data) > RUNNER_PIPE:
        return None
    read, write = os.pipe()
    try:
        try:
            capacity = fcntl.fcntl(write, getattr(fcntl, "F_GETPIPE_SZ", 1032))
        except OSError:
            capacity = 4096  # the least a pipe holds
        if capacity >= len(data):
            os.write(write, data)  # fits the pipe's buffer: never waits for the wrapper
            return read
    finally:
        os.close(write)
    os.close(read)
    return None


def _spawn(runner: str, run: str, internal: str):
    """The wrapper, detached in its own session: its pid, and how to wait for it.

    posix_spawn (a vfork, not a copy of this process), the wrapper reading its script from
    fd 3 (a memfd or a pipe, which it closes first thing): no file to create, and unlike
    `bash -c` the script (the profile's env values with it) is not on a command line every
    user of the node can read. A file and subprocess where the script is long or the platform lacks
    posix_spawn. The wrapper changes folder itself; the agent's own files are close-on-exec."""
    fd = _script_fd(wrapper_source(runner)) if SPAWN else None
    if fd is None:
        import subprocess  # here only: 3 ms of the agent's start, on every node

        script = os.path.join(internal, "run.sh")
        _write(script, runner)
        proc = subprocess.Popen(["bash", script], cwd=run, stdin=subprocess.DEVNULL,
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                start_new_session=True, close_fds=True)
        return proc.pid, proc.wait
    try:
        pid = spawn_wrapper(fd)
    finally:
        os.close(fd)
    return pid, lambda: os.waitpid(pid, 0)


class Agent:
    def __init__(self, out, keeper: str = "") -> None:
        self.out = out
        self.keeper_path = keeper if keeper and KeeperHandle.usable() else ""
        self.keeper: KeeperHandle | None = None
        self.lock = threading.Lock()
        self.holding = 0  # frames are held back (see `held`)
        self.codes: dict = {}  # archive path -> Code (or None: extract from disk)
        self.spares = Spares(INTERNAL)
        self.ended: dict = {}  # run folder -> ((bytes of code, archive), intact code files),
        # for runs wholly gone
        self.removals: list = []  # threads removing run folders

    def start_keeper(self) -> None:
        """The keeper, before the first run needs it (else `start` makes one, and says why
        it could not): forked, as no thread runs yet."""
        if self.keeper_path and self.keeper is None:
            with contextlib.suppress(OSError):
                self.keeper = KeeperHandle(self.keeper_path, self.send, self.ended_run,
                                           self.held, fork=True)

    def send(self, header: dict, payload=None, size: int = 0) -> None:
        header = dict(header, size=size)
        with self.lock:
            self.out.write(json.dumps(header).encode() + b"\n")
            while size > 0:
                chunk = payload.read(min(size, _COPY))
                if not chunk:  # cannot happen for a spooled file of `size` bytes
                    raise OSError("results tar shorter than announced")
                self.out.write(chunk)
                size -= len(chunk)
            if header["size"]:
                self.out.write(b"\n")  # srun forwards a partial last line only at a newline
            if not self.holding:
                self.out.flush()

    @contextlib.contextmanager
    def held(self):
        """Frames sent within leave together when it ends (each flush is a packet)."""
        with self.lock:
            self.holding += 1
        try:
            yield
        finally:
            with self.lock:
                self.holding -= 1
                try:
                    if not self.holding:
                        self.out.flush()
                except BrokenPipeError:
                    os._exit(0)  # the driver is gone; the run folders keep everything

    def run(self, order: dict) -> None:
        ident = order["id"]
        try:
            run, wait, pid, size = self.start(order)
        except Exception as error:  # one execution's setup failed: say so, serve the others
            self.send({"op": "failed", "id": ident, "message": str(error),
                       "code_missing": isinstance(error, CodeMissing)})
            return
        if wait is None:
            return  # the keeper runs it, and says when it ended
        threading.Thread(target=self.finish, daemon=True,
                         args=(ident, run, wait, pid, size, order.get("ignore", []))).start()

    def start(self, order: dict):
        """Run folder, code and record files as the shell wrapper makes them, then the script
        handed to the keeper (or, without one, the detached wrapper started here): the run
        folder, a way to wait for the end (None: the keeper says), the pid of the session's
        leader, and the bytes of code in the folder (None: not to be reused)."""
        run = _expand(order["dir"])
        internal = os.path.join(run, INTERNAL)
        archive = _expand(order["archive"])
        try:
            os.utime(archive)  # used now: the code cache keeps the most recently used archives
        except FileNotFoundError:
            raise CodeMissing(f"no code archive {archive}") from None
        code = self.codes.get(archive, False)
        if code is False:
            code = self.codes[archive] = Code.read(archive)
        intact = None if code is None else self.spares.take(run, archive, code.files)
        try:
            os.mkdir(internal)  # a run may have removed a spare's
        except FileExistsError:
            pass
        except FileNotFoundError:  # a new run folder
            os.makedirs(internal)
        _extract(archive, run, code, intact or frozenset())
        direct = bool(self.keeper_path) and "argv" in order
        if not direct:  # else the keeper's spawn makes them, as it starts the script
            for name in ("stdout", "stderr"):
                _write(os.path.join(internal, name), "")
        size = None if code is None else (code.size, archive)
        if self.keeper_path:
            if direct:
                write_in_place(os.path.join(internal, "node"), order["node"].encode() + b"\n")
                write_in_place(os.path.join(internal, "digest"), order["digest"].encode() + b"\n")
                known = {"RUNAWAY_PATH": _expand(order["root"]), "RUNAWAY_PWD": run,
                         "RUNAWAY_SCRIPT_PATH": os.path.join(run, order["script"])}
                env = {"PWD": run}
                env.update((k, known.get(k, "") if v is None else v) for k, v in order["env"])
                start = {"argv": order["argv"], "env": env}
            else:
                start = {"wrapper": order["runner"]}
            more = (size, order.get("ignore", []))
            if self.keeper is None or not self.keeper.start(order["id"], run, start, more):
                self.keeper = KeeperHandle(self.keeper_path, self.send, self.ended_run,
                                           self.held)
                self.keeper.start(order["id"], run, start, more)
            return run, None, 0, size
        pid, wait = _spawn(order["runner"], run, internal)
        _write(os.path.join(internal, "pid"), f"{pid}\n")  # one small write: whole or empty
        return run, wait, pid, size

    def finish(self, ident: str, run: str, wait, pid: int, size, patterns: list[str]) -> None:
        wait()
        try:
            os.killpg(pid, 0)  # something of the run still runs: its folder is not reused
            alone = False
        except ProcessLookupError:
            alone = True
        except OSError:
            alone = False
        self.ended_run(ident, run, alone, size, patterns, inline=True)

    def ended_run(self, ident: str, run: str, alone: bool, size, patterns: list[str],
                  inline: bool = False) -> None:
        """Send a run's results; its folder may hold a later run when nothing of it is left.
        A tar is packed on a thread of its own (unless `inline`: the caller's is the run's
        own): a big one must not hold up the others."""
        keep = alone and size is not None
        code = self.codes.get(size[1]) if keep else None
        known: set = set()
        try:
            files = result_files(run, patterns, code.files if code else None, known)
            if keep:
                if len(self.ended) >= 4 * SPARES:  # never discarded (leave: everything)
                    with contextlib.suppress(RuntimeError, StopIteration):  # popped meanwhile
                        self.ended.pop(next(iter(self.ended)), None)
                self.ended[run] = (size, frozenset(known))
            record = _small_record(run, files)
            if record is not None:  # nothing but a small record: no tar to make or to read
                self.send({"op": "done", "id": ident, "record": record})
            elif inline:
                self.pack(ident, run, files)
            else:
                threading.Thread(target=self.pack, args=(ident, run, files), daemon=True).start()
        except BrokenPipeError:
            os._exit(0)  # the driver is gone; the run folder keeps everything
        except Exception as error:
            self.send({"op": "failed", "id": ident, "message": f"packing results: {error}"})

    def pack(self, ident: str, run: str, files: list[str]) -> None:
        import tempfile  # for runs that made files only

        try:
            with tempfile.TemporaryFile() as spool:
                with tarfile.open(fileobj=spool, mode="w", format=tarfile.GNU_FORMAT) as tar:
                    for rel in files:
                        tar.add(os.path.join(run, rel), arcname="./" + rel, recursive=False)
                size = spool.tell()
                spool.seek(0)
                self.send({"op": "done", "id": ident}, spool, size)
        except BrokenPipeError:
            os._exit(0)  # the driver is gone; the run folder keeps everything
        except Exception as error:
            self.send({"op": "failed", "id": ident, "message": f"packing results: {error}"})

    def discard(self, dirs: list) -> None:
        """The driver holds these runs' results: keep their folders as spares, or remove
        them (in a thread: a big one must not hold up the next orders)."""
        gone = []
        for folder in dirs:
            run = _expand(folder)
            ended = self.ended.pop(run, None)
            try:
                if ended is not None and self.spares.keep(run, *ended):
                    continue
            except OSError:
                pass
            gone.append(run)
        if gone:
            self.removals = [t for t in self.removals if t.is_alive()]
            thread = threading.Thread(target=_remove_all, args=(gone,), daemon=True)
            thread.start()
            self.removals.append(thread)

    def close(self) -> None:
        """At the end of input: finish the removals and remove the spares. The keeper ends
        after its last script."""
        if self.keeper is not None:
            self.keeper.close()
        for thread in self.removals:
            thread.join()
        self.spares.close()


def _remove_all(folders: list) -> None:
    for folder in folders:
        shutil.rmtree(folder, ignore_errors=True)


def main() -> None:
    node_keeper.name_process(b"runaway-agent")
    out = sys.stdout.buffer
    agent = Agent(out, os.path.join(os.path.dirname(os.path.abspath(__file__)), "node_keeper.py"))
    agent.send({"op": "hello", "protocol": PROTOCOL, "python": sys.version.split()[0],
                "pid": os.getpid(), "direct": bool(agent.keeper_path)})
    agent.start_keeper()  # before any thread
    for line in sys.stdin.buffer:
        order = json.loads(line)
        if order.get("op") == "run":
            agent.run(order)
        elif order.get("op") == "discard":
            agent.discard(order.get("dirs", []))
    agent.close()
    os._exit(0)  # end of input: the driver closed the channel; executions run on detached


def entry() -> None:
    """Run the agent (as the driver starts it: see agent.py's bootstrap)."""
    try:
        main()
    except (BrokenPipeError, KeyboardInterrupt):
        os._exit(0)


if __name__ == "__main__":
    entry()
