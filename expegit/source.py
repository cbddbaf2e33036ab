"""The campaign's source of the shared driver loop: a sweep at one code version, where `done`
writes `runs/<id>/` and commits it with the next group commit.

The driver owns resume, recovery, retries and drain; this module only says how a journal row
becomes an execution of the exported code, and how a result becomes a record. `done` is
idempotent: called again for a row after a crash, it rewrites the same folder and the commit
finds nothing new or records it now.

Times: the moment an execution starts on its slot is also written into its journal row's
payload (`started_at`), so that a driver resumed after a crash knows when the executions it
recovers started (the engine's result of a recovery only knows when it was collected).
"""

from __future__ import annotations

import contextlib
import getpass
import json
import math
import shutil
import socket
import time
from collections.abc import AsyncIterator
from pathlib import Path

import anyio
import attrs

from expegit import record as records
from expegit.campaign import RUNS, Campaign
from expegit.commits import GroupCommitter
from expegit.large import large_files
from liborchestra import __version__, events
from liborchestra.driver import Driver, Source
from liborchestra.execution import Execution, Result
from liborchestra.journal import Row
from liborchestra.sched import find_features

STARTED_AT = "started_at"  # journal payload key: when the current run started on its slot


@attrs.frozen
class RunSettings:
    """One `expegit run`, as saved in its journal's meta."""

    name: str
    profile: str  # the profile as given (name or path)
    script: str  # relative to code/
    commit: str
    tree: Path  # the exported code folder
    patch: str | None = None
    duration: float | None = None
    ship: tuple[tuple[str, Path], ...] = ()


def user_at_host() -> str:
    try:
        user = getpass.getuser()
    except (KeyError, OSError):
        user = "unknown"
    return f"{user}@{socket.gethostname()}"


class CampaignSource(Source):
    def __init__(self, campaign: Campaign, settings: RunSettings,
                 committer: GroupCommitter | None = None) -> None:
        self.campaign, self.settings = campaign, settings
        self.committer = committer or GroupCommitter(campaign, settings.name)
        self._submitted: dict[str, float] = {}
        self._started: dict[str, float] = {}
        self._seqs: dict[str, int] = {}  # run id -> journal row, until it starts
        self._journal = None
        self._by = user_at_host()

    @contextlib.asynccontextmanager
    async def open(self, driver: Driver) -> AsyncIterator[None]:
        self._journal = driver.journal
        driver.engine.listeners.append(self._on_event)
        await anyio.to_thread.run_sync(commit_leftovers, self.campaign, self.settings.name)
        async with anyio.create_task_group() as tg:
            tg.start_soon(self.committer.serve)
            try:
                yield
            finally:
                await self.committer.flush()
                tg.cancel_scope.cancel()

    def execution(self, row: Row, run_id: str) -> Execution:
        s = self.settings
        self._submitted.setdefault(row.uuid, time.time())
        self._seqs[run_id] = row.seq
        return Execution(script=s.tree / s.script, args=row.argv, code=s.tree, uuid=run_id,
                         output=self.campaign.runs / row.uuid, duration=s.duration,
                         ship=s.ship)

    def _on_event(self, event: events.Event) -> None:
        if isinstance(event, events.ExecutionStarted):
            now = time.time()
            self._started[event.uuid.split(".", 1)[0]] = now
            seq = self._seqs.pop(event.uuid, None)
            if seq is not None and self._journal is not None:
                payload = self._journal.get(seq).payload
                self._journal.update_payload(seq, {**payload, STARTED_AT: now})

    async def done(self, row: Row, result: Result) -> None:
        folder = self.campaign.runs / row.uuid
        made = await anyio.to_thread.run_sync(self._write, row, result, folder)
        await self.committer.record([f"{RUNS}/{row.uuid}"], made.large and [
            f"{RUNS}/{row.uuid}/{p}" for p in made.large])

    def _write(self, row: Row, result: Result, folder: Path) -> records.Record:
        """The record of a final result; one already written (a crash came before its
        commit) is kept as it is."""
        s, message = self.settings, result.message
        folder.mkdir(parents=True, exist_ok=True)
        (folder / ".orchestra-output").unlink(missing_ok=True)
        if (folder / records.RECORD).is_file():
            return records.read(folder)
        stdout = _text(folder / "stdout")
        features: tuple[float, ...] = ()
        try:
            features = tuple(f if math.isfinite(f) else None  # type: ignore[misc]
                             for f in find_features(folder, stdout))  # JSON has no NaN
        except ValueError as error:
            message = (message + "; " if message else "") + f"features unreadable: {error}"
        metrics = _metrics(folder / "results.json")
        settings = self.campaign.settings
        large = large_files(folder, settings.large_threshold, settings.large) \
            if settings.annex else []
        submitted, started, ended, duration, recovered = self._times(row, result, folder)
        made = records.Record(
            id=row.uuid, commit=s.commit, patch=s.patch, script=s.script, arguments=row.argv,
            label=row.label, parameters=records.parse_parameters(row.argv), profile=s.profile,
            state=result.state.value, exit_code=result.ecode, node=result.node or row.node,
            slot=result.slot or row.slot, allocation=row.allocation,
            submitted=submitted, started=started, ended=ended, duration=duration,
            recovered=recovered,
            features=features, metrics=metrics, message=message, attempts=row.attempts,
            run=s.name, rerun_of=row.payload.get("rerun_of"), by=self._by, tool=__version__,
            large=tuple(large))
        records.write(folder, made)
        return made


    def _times(self, row: Row, result: Result, folder: Path) -> tuple:
        """(submitted, started, ended, duration, recovered) of a final result. An execution
        this driver did not see start was started by an earlier one (recovered on resume, or
        recorded again after a crash): its start is the one that driver journaled, and its
        end when its results were fetched (the mtime of the `ecode` file the engine writes
        then) — the end itself when it still ran at resume, else an upper bound."""
        started = self._started.get(row.uuid)
        if started is not None:
            ended = result.finished if result.finished is not None else time.time()
            duration = (result.finished - result.started) \
                if result.started is not None and result.finished is not None else None
            return self._submitted.get(row.uuid), started, ended, duration, False
        started = row.payload.get(STARTED_AT) or row.started
        try:
            ended = (folder / "ecode").stat().st_mtime
        except OSError:
            ended = result.finished
        duration = ended - started if started is not None and ended is not None else None
        return row.started, started, ended, duration, True


def _text(path: Path) -> str:
    return path.read_text(errors="replace") if path.is_file() else ""


def _metrics(path: Path) -> dict:
    """results.json of a run folder when it holds a JSON object, else {}."""
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def commit_leftovers(campaign: Campaign, title: str) -> int:
    """Commit record folders a crash left written but not committed (their record file is
    complete: it is written last); returns how many."""
    with campaign.writing() as repo:
        return _commit_leftovers(campaign, repo, title)


def _commit_leftovers(campaign: Campaign, repo, title: str) -> int:
    out = repo.git.status("--porcelain", "--untracked-files=normal", "--", RUNS)
    ids = set()
    for line in out.splitlines():
        parts = line[3:].strip().strip('"').split("/")
        if len(parts) >= 2 and parts[0] == RUNS and parts[1]:
            ids.add(parts[1])
    paths, annexed = [], []
    for run_id in sorted(ids):
        folder = campaign.runs / run_id
        if not (folder / records.RECORD).is_file():
            continue  # not finished: the driver records it (or it is someone's in flight)
        (folder / ".orchestra-output").unlink(missing_ok=True)
        made = records.read(folder)
        paths.append(f"{RUNS}/{run_id}")
        annexed += [f"{RUNS}/{run_id}/{p}" for p in made.large
                    if (folder / p).exists() and not (folder / p).is_symlink()]
    if paths:
        campaign.commit(paths, f"expegit: {title}: {len(paths)} record(s) left by a crash",
                        annexed)
    return len(paths)


def remove_run(campaign: Campaign, folder: Path) -> None:
    """Delete a record folder and commit its removal."""
    rel = folder.relative_to(campaign.root).as_posix()
    with campaign.writing() as repo:
        repo.git.rm("-r", "-q", "--cached", "--ignore-unmatch", "--", rel)
        shutil.rmtree(folder, ignore_errors=True)
        repo.git.commit("-q", "--no-verify", "-m", f"expegit: remove {folder.name}", "--", rel)
