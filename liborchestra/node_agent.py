"""The node agent: one process per node and engine that starts executions and packs their
results, so an execution costs two processes on the node (its wrapper and the script) instead
of nine, and no SSH channel of its own.

This file is shipped to the node as it is (cached there by content hash, like the code) and
run with the node's `python3` (3.8 or newer), so it uses the standard library only and imports
nothing from liborchestra. The driver imports it too, for the protocol and the ignore rules.

It keeps the run-folder contract of the shell wrapper exactly: each run folder gets the code,
`.orchestra/{stdout,stderr,run.sh,pid,unpacked}`, and the wrapper writes `.orchestra/ecode`
when the script ends. So when the agent or its channel dies, nothing is lost: the script runs
on in its own session, and the driver reattaches to the run folder the way it always has.

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
import fnmatch
import json
import os
import subprocess
import sys
import tarfile
import tempfile
import threading

PROTOCOL = 1
INTERNAL = ".orchestra"  # the run folder's own files, as the shell wrapper writes them
_COPY = 1 << 20
INLINE = 64 * 1024  # bytes of stdout + stderr sent inline when the run made no other file


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
    """What the results tar holds, as `find -newer .orchestra/unpacked` chose it: the files and
    links the run made or changed (ignored ones and `.orchestra` pruned), then the record."""
    since = os.lstat(os.path.join(run, INTERNAL, "unpacked")).st_mtime_ns
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


class Agent:
    def __init__(self, out) -> None:
        self.out = out
        self.lock = threading.Lock()

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
            run, proc = self.start(order)
        except Exception as error:  # one execution's setup failed: say so, serve the others
            self.send({"op": "failed", "id": ident, "message": str(error),
                       "code_missing": isinstance(error, CodeMissing)})
            return
        self.send({"op": "started", "id": ident, "pid": proc.pid})
        threading.Thread(target=self.finish, args=(ident, run, proc, order.get("ignore", [])),
                         daemon=True).start()

    def start(self, order: dict):
        """Run folder, code, record files and the detached wrapper, as the shell wrapper does."""
        run = _expand(order["dir"])
        internal = os.path.join(run, INTERNAL)
        os.makedirs(internal, exist_ok=True)
        archive = _expand(order["archive"])
        try:
            os.utime(archive)  # used now: the code cache keeps the most recently used archives
        except FileNotFoundError:
            raise CodeMissing(f"no code archive {archive}") from None
        with tarfile.open(archive, mode="r:") as tar:
            if hasattr(tarfile, "fully_trusted_filter"):  # our own archive, made by the driver
                tar.extractall(run, filter="fully_trusted")
            else:
                tar.extractall(run)
        for name in ("stdout", "stderr", "unpacked"):
            open(os.path.join(internal, name), "wb").close()
        script = os.path.join(internal, "run.sh")
        with open(script, "w") as f:
            f.write(order["runner"])
        proc = subprocess.Popen(["bash", script], cwd=run, stdin=subprocess.DEVNULL,
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                start_new_session=True, close_fds=True)
        pid_tmp = os.path.join(internal, "pid.tmp")
        with open(pid_tmp, "w") as f:
            f.write(f"{proc.pid}\n")
        os.replace(pid_tmp, os.path.join(internal, "pid"))
        return run, proc

    def finish(self, ident: str, run: str, proc, patterns: list[str]) -> None:
        proc.wait()
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
