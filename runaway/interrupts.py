"""Ctrl-C as in the original runaway: the first press drains (when the command can: no new
executions, running ones finish and are fetched), the next cancels now (remote processes
killed, allocations released), the one after exits at once. SIGTERM cancels now."""

from __future__ import annotations

import os
import signal
import sys
from typing import Awaitable, Callable

import anyio

if sys.version_info < (3, 11):  # anyio depends on the backport there
    from exceptiongroup import BaseExceptionGroup

from liborchestra.errors import OrchestraError
from runaway.render import Renderer


def _single(error: BaseException) -> BaseException:
    """The one error inside (nested) exception groups, or the error itself."""
    while isinstance(error, BaseExceptionGroup) and len(error.exceptions) == 1:
        error = error.exceptions[0]
    return error


class Interrupts:
    def __init__(self, renderer: Renderer) -> None:
        self.renderer = renderer
        self.on_first: Callable[[], object] | None = None  # set by commands that can drain
        self.signum: int | None = None
        self._level = 0

    async def run(self, command: Callable[..., Awaitable[int]], *args: object) -> int:
        outcome: list[int] = []
        failure: list[OrchestraError] = []
        working = anyio.CancelScope()  # cancelled by the second press; the watch goes on,
        # so that a third press during the cleanup still exits at once
        async with anyio.create_task_group() as tg:
            async def watch() -> None:
                with anyio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
                    async for signum in signals:
                        self._press(signum, working)

            async def work() -> None:
                try:
                    with working:
                        outcome.append(await command(*args, self))
                except Exception as error:  # task groups wrap errors: find ours inside
                    inner = _single(error)
                    if not isinstance(inner, OrchestraError):
                        raise
                    failure.append(inner)
                tg.cancel_scope.cancel()

            tg.start_soon(watch)
            tg.start_soon(work)
        if failure:
            raise failure[0]
        if self.signum is not None:
            return 128 + self.signum
        return outcome[0]

    def _press(self, signum: int, scope: anyio.CancelScope) -> None:
        self.signum = self.signum or signum
        drainable = signum == signal.SIGINT and self.on_first is not None
        self._level = self._level + 1 if drainable else max(self._level + 1, 2)
        if self._level == 1:
            self.on_first()
        elif self._level == 2:
            self.renderer.note("interrupted: killing remote processes and releasing "
                               "allocations (again to exit at once)")
            scope.cancel()
        else:
            self.renderer.error("interrupted again: exiting without cleanup")
            os._exit(128 + signum)
