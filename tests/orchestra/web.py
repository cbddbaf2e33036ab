"""What the orchestra tests share: a real `orchestra serve` process, raw HTTP requests (paths
sent byte for byte, never normalized), batches written through liborchestra's Journal, and
campaigns made by the real `expegit init` and `expegit run`."""

from __future__ import annotations

import contextlib
import http.client
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
import uuid as uuidlib
from collections.abc import Iterator
from pathlib import Path

import attrs

from liborchestra.journal import Journal


@attrs.frozen
class Answer:
    status: int
    headers: dict[str, str]
    body: str


@attrs.frozen
class Server:
    url: str  # http://127.0.0.1:PORT
    host: str
    port: int
    proc: subprocess.Popen
    printed: str  # what it printed at start

    def request(self, method: str, path: str, body: str | None = None,
                headers: dict[str, str] | None = None) -> Answer:
        conn = http.client.HTTPConnection(self.host, self.port, timeout=30)
        try:
            heads = dict(headers or {})
            if body is not None:
                heads.setdefault("content-type", "application/x-www-form-urlencoded")
            conn.request(method, path, body=body, headers=heads)
            answer = conn.getresponse()
            return Answer(answer.status, {k.lower(): v for k, v in answer.getheaders()},
                          answer.read().decode(errors="replace"))
        finally:
            conn.close()

    def get(self, path: str, **headers: str) -> Answer:
        return self.request("GET", path, headers=headers)

    def post(self, path: str, fields: dict[str, str], **headers: str) -> Answer:
        from urllib.parse import urlencode

        return self.request("POST", path, urlencode(fields), headers)

    def csrf(self, **headers: str) -> str:
        page = self.get("/launch", **headers)
        assert page.status == 200, page
        return re.search(r'name="csrf" value="([^"]+)"', page.body).group(1)


@contextlib.contextmanager
def serving(*dirs: Path, args: tuple[str, ...] = (), host: str = "127.0.0.1",
            cwd: Path | None = None, env: dict | None = None) -> Iterator[Server]:
    """`orchestra serve DIRS` on a free port until the block ends, stopped on every path."""
    log = tempfile.TemporaryFile("w+")  # noqa: SIM115 (closed in finally) its log, shown when it fails to start
    proc = subprocess.Popen(
        [sys.executable, "-m", "orchestra", "serve", *map(str, dirs), "--host", host,
         "--port", "0", *args], stdout=subprocess.PIPE, stderr=log, text=True,
        cwd=cwd, env={**os.environ, **(env or {})}, start_new_session=True)
    try:
        first = proc.stdout.readline()
        second = proc.stdout.readline()
        match = re.search(r"http://([^:/]+):(\d+)/", second)
        assert match, (first, second, _read(log))
        server = Server(f"http://{match[1]}:{match[2]}", match[1], int(match[2]), proc,
                        first + second)
        deadline = time.monotonic() + 30
        while True:
            try:
                server.get("/static/orchestra.css")
                break
            except OSError:
                assert proc.poll() is None, _read(log)
                assert time.monotonic() < deadline, "the server did not answer in 30 s"
                time.sleep(0.1)
        yield server
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
        proc.stdout.close()
        errors = _read(log)
        log.close()
        # the server logs what it could not answer; a test must never leave a 500 behind it
        assert "Traceback" not in errors, errors


def _read(log) -> str:
    log.seek(0)
    return log.read()


def make_batch(folder: Path, labels: list[str], states: list[str] | None = None,
               meta: dict | None = None) -> Journal:
    """A batch journal as a driver leaves it: rows added, started, placed and finished
    through Journal's own calls, one execution folder per row with stdout and stderr."""
    journal = Journal.create(folder / "journal.sqlite",
                             {"name": folder.name, "profile_name": "loc", **(meta or {})})
    journal.add((str(uuidlib.uuid4()), (label,) if label else (), label) for label in labels)
    for row, state in zip(journal.rows(), states or [], strict=False):
        if state == "queued":
            continue
        journal.started(row.seq, row.uuid)
        journal.placed(row.seq, "node7", "node7/3", "job-42", "ab" * 32)
        if state in ("completed", "failed", "lost", "cancelled"):
            ecode = {"completed": 0, "failed": 1}.get(state)
            journal.finished(row.seq, state, ecode, "" if ecode is not None else state)
        out = folder / row.uuid
        out.mkdir()
        (out / "stdout").write_text(f"out of {row.label}\n")
        (out / "stderr").write_text(f"err of {row.label}\n")
    return journal


GIT_IDENTITY = {"GIT_AUTHOR_NAME": "Test", "GIT_AUTHOR_EMAIL": "test@example.org",
                "GIT_COMMITTER_NAME": "Test", "GIT_COMMITTER_EMAIL": "test@example.org"}


def git(cwd: Path, *args: str) -> str:
    done = subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True,
                          env={**os.environ, **GIT_IDENTITY})
    assert done.returncode == 0, f"git {args}: {done.stderr}"
    return done.stdout


def expegit(*args: str, cwd: Path, check: bool = True) -> subprocess.CompletedProcess[str]:
    """The expegit command line, run as a user runs it."""
    done = subprocess.run([sys.executable, "-m", "expegit", *args], cwd=cwd,
                          capture_output=True, text=True, timeout=300,
                          env={**os.environ, **GIT_IDENTITY})
    if check:
        assert done.returncode == 0, f"expegit {args}: {done.returncode}\n{done.stderr}"
    return done


def make_campaign(folder: Path, scripts: dict[str, str]) -> Path:
    """`expegit init FOLDER` around a new code repository holding `scripts` (name: body)."""
    code = folder.with_name(folder.name + "-code")
    code.mkdir(parents=True)
    git(code, "init", "-q", "-b", "main")
    for name, body in scripts.items():
        (code / name).write_text(body)
        (code / name).chmod(0o755)
    git(code, "add", ".")
    git(code, "commit", "-q", "-m", "the code")
    expegit("init", str(folder), "--code", str(code), cwd=folder.parent)
    return folder
