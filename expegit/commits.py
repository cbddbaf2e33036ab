"""Group commits: every record that arrives while a commit is being prepared goes into the
same commit, so 1,000 executions cost a few commits, not 1,000.

`record` returns only once its files are committed: the driver marks an execution recorded
after `done` returns, so a crash before the commit leaves it unrecorded in the journal and the
next `--resume` records it again (into the same folder, with the same content: nothing twice).
"""

from __future__ import annotations

import os

import anyio
import attrs

from expegit.campaign import Campaign

# seconds a batch stays open for more records after the first (EXPEGIT_COMMIT_DELAY: more
# records per commit on very fast sweeps; the crash tests widen the window with it)
DELAY = float(os.environ.get("EXPEGIT_COMMIT_DELAY", "0.3"))
MOST = 500  # records in one commit at most


@attrs.define(eq=False)
class _Batch:
    paths: list[str] = attrs.field(factory=list)
    annexed: list[str] = attrs.field(factory=list)
    count: int = 0
    done: anyio.Event = attrs.field(factory=anyio.Event)
    error: BaseException | None = None


class GroupCommitter:
    """Run `serve` in a task group; `record` from any task; `flush` at the end."""

    def __init__(self, campaign: Campaign, title: str, delay: float = DELAY,
                 most: int = MOST) -> None:
        self.campaign, self.title, self.delay, self.most = campaign, title, delay, most
        self._batch = _Batch()
        self._wake = anyio.Event()
        self._full = anyio.Event()
        self.commits = 0

    async def record(self, paths: list[str], annexed: list[str] = ()) -> None:
        """Commit these paths with the next batch; raises what the commit raised."""
        batch = self._batch
        batch.paths += paths
        batch.annexed += list(annexed)
        batch.count += 1
        self._wake.set()
        if batch.count >= self.most:
            self._full.set()
        await batch.done.wait()
        if batch.error is not None:
            raise batch.error

    async def serve(self) -> None:
        while True:
            await self._wake.wait()
            with anyio.move_on_after(self.delay):
                await self._full.wait()
            await self._commit()

    async def flush(self) -> None:
        """Commit what is waiting now (shielded: records in hand are never dropped)."""
        with anyio.CancelScope(shield=True):
            await self._commit()

    async def _commit(self) -> None:
        batch, self._batch = self._batch, _Batch()
        self._wake, self._full = anyio.Event(), anyio.Event()
        if not batch.count:
            batch.done.set()
            return
        message = f"expegit: {self.title}: {batch.count} record(s)"
        try:
            if await anyio.to_thread.run_sync(self.campaign.commit, batch.paths, message,
                                              batch.annexed):
                self.commits += 1
        except Exception as error:
            batch.error = error
        batch.done.set()
