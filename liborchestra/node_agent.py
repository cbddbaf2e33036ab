"""The node agent: one process per node and engine that starts executions and packs their
results, so an execution costs two processes on the node (its wrapper and the script) instead
of nine, and no SSH channel of its own.

This file is shipped to the node as it is (cached there by content hash, like the code) and
run with the node's `python3` (3.8 or newer), so it uses the standard library only and imports
nothing from liborchestra. The driver imports it too, for the protocol, the ignore rules
and its file writer.

It keeps the run-folder contract of the shell wrapper: each run folder gets the code and
`.orchestra/{stdout,stderr,pid}`, and the wrapper (bash, in the script's own session) writes
`.orchestra/{node,digest}` and, when the script ends, `.orchestra/ecode`. So when the agent or
its channel dies, nothing is lost: the script runs on in its own session, and the driver
reattaches to the run folder the way it always has. Files are few on purpose (creating one
costs up to half a millisecond on some disks, and more on parallel filesystems): the code is
written from memory, the wrapper reads its script from memory, and what a run made is told
from the code by its time (the code's files date from 1970), not by a marker file.

Protocol, both ways: frames of one JSON header line, then `size` raw bytes and a newline when
size > 0 (the newline because `srun` holds a partial line back until one comes).
  driver -> agent  {"op": "run", "id", "dir", "archive", "runner", "ignore": [patterns]}
  agent -> driver  {"op": "hello", "protocol", "python"} once at start;
                   {"op": "started", "id", "pid"};
                   {"op": "failed", "id", "message", "code_missing": bool};
                   {"op": "done", "id", "size"} followed by a tar of the results, or
                   {"op": "done", "id", "record": {name: base64}} when there are only the
                   run's small stdout, stderr and ecode
End of input ends the agent (its executions go on).
"""

from __future__ import annotations

import base64
import fcntl
import fnmatch
import json
import os
import signal
import subprocess
import sys
import tarfile
import tempfile
import threading

PROTOCOL = 2
INTERNAL = ".orchestra"  # the run folder's own files, as the shell wrapper writes them
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


def result_files(run: str, patterns: list[str]) -> list[str]:
    """What the results tar holds, as `find -newermt @1` chose it: the files and links the run
    made or changed (ignored ones and `.orchestra` pruned), then the record."""
    since = CODE_TIME * 10**9
    chosen = []
    for root, dirs, files in os.walk(run):
        rel_root = os.path.relpath(root, run)
        keep = []
        for name in sorted(dirs):
            rel = name if rel_root == "." else rel_root + "/" + name
            path = os.path.join(root, name)
            if rel == INTERNAL or ignored(patterns, rel, True):
                continue
            if os.path.islink(path):  # os.walk does not follow links: a link is a file here
                if os.lstat(path).st_mtime_ns > since:
                    chosen.append(rel)
                continue
            keep.append(name)
        dirs[:] = keep
        for name in sorted(files):
            rel = name if rel_root == "." else rel_root + "/" + name
            if ignored(patterns, rel, False):
                continue
            if os.lstat(os.path.join(root, name)).st_mtime_ns > since:
                chosen.append(rel)
    for name in ("stdout", "stderr", "ecode"):
        if os.path.lexists(os.path.join(run, INTERNAL, name)):
            chosen.append(INTERNAL + "/" + name)
    return chosen


def _small_record(run: str, files: list[str]) -> dict | None:
    """stdout, stderr and ecode inline (base64) when the run made no other file and they are
    small; None otherwise (then they travel in the results tar)."""
    if any(not rel.startswith(INTERNAL + "/") for rel in files):
        return None
    record, size = {}, 0
    for rel in files:
        with open(os.path.join(run, rel), "rb") as f:
            data = f.read(INLINE + 1)
        size += len(data)
        if size > INLINE:
            return None
        record[rel.split("/", 1)[1]] = base64.b64encode(data).decode()
    return record


def _expand(path: str) -> str:
    """`~` and relative paths from the home folder, as the shell wrapper reads them."""
    path = os.path.expanduser(path)
    return path if os.path.isabs(path) else os.path.join(os.path.expanduser("~"), path)


class CodeMissing(Exception):
    """The code archive is gone (pruned or cleaned): the driver sends it again."""


class Code:
    """A code archive read once, then written out from memory into each run folder, as
    tarfile would extract it (modes and times kept) but without parsing the tar each time.
    None for archives that are large or hold other than folders, files and links."""

    LIMIT = 64 << 20  # bytes: larger archives are extracted from disk each time

    def __init__(self, members: list) -> None:
        self.members = members

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

    def write(self, run: str) -> None:
        folders = []
        made = {run}
        for name, kind, mode, data, mtime in self.members:
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


def _extract(archive: str, run: str, codes: dict) -> None:
    code = codes.get(archive, False)
    if code is False:
        code = codes[archive] = Code.read(archive)
    if code is not None:
        code.write(run)
        return
    with tarfile.open(archive, mode="r:") as tar:
        if hasattr(tarfile, "fully_trusted_filter"):  # our own archive, made by the driver
            tar.extractall(run, filter="fully_trusted")
        else:
            tar.extractall(run)


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


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


def _write(path: str, text: str) -> None:
    write_bytes(path, text.encode())


_NULL = ((os.POSIX_SPAWN_OPEN, 0, os.devnull, os.O_RDONLY, 0),
         (os.POSIX_SPAWN_OPEN, 1, os.devnull, os.O_WRONLY, 0),
         (os.POSIX_SPAWN_OPEN, 2, os.devnull, os.O_WRONLY, 0)) \
    if hasattr(os, "POSIX_SPAWN_OPEN") else ()
_DEFAULT_SIGNALS = tuple(getattr(signal, name) for name in ("SIGPIPE", "SIGXFSZ")
                         if hasattr(signal, name))  # Python ignores them; scripts must not


def _script_fd(data: bytes):
    """A file descriptor to read the wrapper's script from at offset 0 (the caller closes
    it), or None. A memfd where Linux has them: seekable, so bash reads the script in
    blocks (from a pipe it reads one byte per system call: 0.6-1.2 ms of CPU for a 2 KB
    script on the test machine), and in memory, so no file to create. Otherwise a pipe whose
    buffer holds it all (a user past the kernel's pipe quota gets 4 KiB pipes: writing more
    would wait for the wrapper, which reads on only as its script runs)."""
    try:
        fd = os.memfd_create("runaway-wrapper", os.MFD_CLOEXEC)
    except (AttributeError, OSError):  # not Linux, or refused: a pipe
        pass
    else:
        try:
            _write_all(fd, data)
            os.lseek(fd, 0, os.SEEK_SET)
            return fd
        except OSError:
            os.close(fd)
            raise
    if len(data) > RUNNER_PIPE:
        return None
    read, write = os.pipe()
    try:
        capacity = fcntl.fcntl(write, getattr(fcntl, "F_GETPIPE_SZ", 1032))
        if capacity >= len(data):
            os.write(write, data)  # fits the pipe's buffer: never waits for the wrapper
            return read
    except OSError:
        pass
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
    data = b"exec 3<&-\n" + runner.encode()
    fd = _script_fd(data) if _NULL and hasattr(os, "posix_spawnp") else None
    if fd is None:
        script = os.path.join(internal, "run.sh")
        _write(script, runner)
        proc = subprocess.Popen(["bash", script], cwd=run, stdin=subprocess.DEVNULL,
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                start_new_session=True, close_fds=True)
        return proc.pid, proc.wait
    try:
        pid = os.posix_spawnp("bash", ["bash", "/dev/fd/3"], os.environ,
                              file_actions=(*_NULL, (os.POSIX_SPAWN_DUP2, fd, 3)),
                              setsid=True, setsigdef=_DEFAULT_SIGNALS)
    finally:
        os.close(fd)
    return pid, lambda: os.waitpid(pid, 0)


class Agent:
    def __init__(self, out) -> None:
        self.out = out
        self.lock = threading.Lock()
        self.codes: dict = {}  # archive path -> Code (or None: extract from disk)

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
            self.out.flush()

    def run(self, order: dict) -> None:
        ident = order["id"]
        try:
            run, wait, pid = self.start(order)
        except Exception as error:  # one execution's setup failed: say so, serve the others
            self.send({"op": "failed", "id": ident, "message": str(error),
                       "code_missing": isinstance(error, CodeMissing)})
            return
        self.send({"op": "started", "id": ident, "pid": pid})
        threading.Thread(target=self.finish, args=(ident, run, wait, order.get("ignore", [])),
                         daemon=True).start()

    def start(self, order: dict):
        """Run folder, code, record files and the detached wrapper, as the shell wrapper does:
        the run folder, a way to wait for the end, and the pid of the session's leader."""
        run = _expand(order["dir"])
        internal = os.path.join(run, INTERNAL)
        os.makedirs(internal, exist_ok=True)
        archive = _expand(order["archive"])
        try:
            os.utime(archive)  # used now: the code cache keeps the most recently used archives
        except FileNotFoundError:
            raise CodeMissing(f"no code archive {archive}") from None
        _extract(archive, run, self.codes)
        for name in ("stdout", "stderr"):
            _write(os.path.join(internal, name), "")
        pid, wait = _spawn(order["runner"], run, internal)
        _write(os.path.join(internal, "pid"), f"{pid}\n")  # one small write: whole or empty
        return run, wait, pid

    def finish(self, ident: str, run: str, wait, patterns: list[str]) -> None:
        wait()
        try:
            files = result_files(run, patterns)
            record = _small_record(run, files)
            if record is not None:  # nothing but a small record: no tar to make or to read
                self.send({"op": "done", "id": ident, "record": record})
                return
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


def main() -> None:
    out = sys.stdout.buffer
    agent = Agent(out)
    agent.send({"op": "hello", "protocol": PROTOCOL, "python": sys.version.split()[0],
                "pid": os.getpid()})
    for line in sys.stdin.buffer:
        order = json.loads(line)
        if order.get("op") == "run":
            agent.run(order)
    os._exit(0)  # end of input: the driver closed the channel; executions run on detached


if __name__ == "__main__":
    try:
        main()
    except (BrokenPipeError, KeyboardInterrupt):
        os._exit(0)
