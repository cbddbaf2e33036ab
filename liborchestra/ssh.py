"""SSH connection pools over asyncssh: pool -> connection -> channel.

One `HostPool` per endpoint keeps a few connections and hands out channels, staying a margin
below sshd's MaxSessions (`max_channels`, default 8 of sshd's 10). More connections are opened
one handshake at a time (sshd's MaxStartups drops bursts of handshakes). A refused channel is
back-pressure: the connection's budget shrinks and the open is retried, never failed. A dead
connection is dropped and replaced with backoff. Nodes behind a login host are reached with
asyncssh's `tunnel=` over a pooled connection to that host.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
from typing import AsyncIterator

import anyio
import asyncssh
import attrs

from liborchestra.errors import ConnectionLostError, HostKeyError, SSHError

log = logging.getLogger(__name__)
LOST_ERRORS = (asyncssh.ConnectionLost, asyncssh.DisconnectError, BrokenPipeError,
         ConnectionResetError, EOFError)
_FAILURE_MEMORY = 5.0  # seconds during which waiters share a failed connect instead of retrying


@attrs.frozen
class Endpoint:
    """Where to connect. Unset fields come from the SSH config files, as with `ssh`."""

    host: str
    port: int | None = None
    user: str | None = None
    identities: tuple[str, ...] = ()
    known_hosts: str | None = None
    config: tuple[str, ...] = ()
    jump: Endpoint | None = None
    proxy_command: str | None = None  # as OpenSSH's ProxyCommand (legacy profiles)

    def __str__(self) -> str:
        user = f"{self.user}@" if self.user else ""
        port = f":{self.port}" if self.port else ""
        via = f" via {self.jump}" if self.jump else ""
        return f"{user}{self.host}{port}{via}"


@attrs.frozen
class Limits:
    channels: int = 8
    connections: int = 4
    keepalive: float = 15.0
    connect_timeout: float = 15.0
    connect_attempts: int = 4


@attrs.frozen
class Completed:
    returncode: int
    stdout: bytes
    stderr: bytes


@attrs.define
class Stats:
    """Counters that tests and benchmarks read (not used for decisions)."""

    connects: int = 0
    channels: int = 0
    refusals: int = 0
    lost: int = 0


@attrs.define(eq=False)
class _Connection:
    conn: asyncssh.SSHClientConnection
    budget: int
    in_use: int = 0
    dead: bool = False


class HostPool:
    """Connections to one endpoint and the channel budget over them."""

    def __init__(self, endpoint: Endpoint, limits: Limits, pool: SSHPool) -> None:
        self.endpoint, self.limits, self._pool = endpoint, limits, pool
        self._conns: list[_Connection] = []
        self._changed = anyio.Condition()
        self._connecting = False
        self._failure: SSHError | None = None
        self._failed_at = 0.0
        self.stats = Stats()

    # -- connections ---------------------------------------------------------------------------

    async def _connect(self) -> _Connection:
        """Open one connection, retrying transient failures with backoff."""
        delay = 0.2
        for attempt in range(self.limits.connect_attempts):
            try:
                conn = await self._open()
            except (OSError, asyncssh.Error, TimeoutError) as error:
                if not _transient(error) or attempt == self.limits.connect_attempts - 1:
                    raise self._explain(error) from None
                log.debug("connect to %s failed (%s), retrying", self.endpoint, error)
                await anyio.sleep(delay)
                delay *= 2
            else:
                self.stats.connects += 1
                return _Connection(conn, budget=self.limits.channels)
        raise AssertionError("unreachable")

    async def _open(self) -> asyncssh.SSHClientConnection:
        ep, options = self.endpoint, {}
        if ep.port:
            options["port"] = ep.port
        if ep.user:
            options["username"] = ep.user
        if ep.identities:
            options["client_keys"] = list(ep.identities)
        if ep.known_hosts:
            options["known_hosts"] = ep.known_hosts
        if ep.config:
            options["config"] = list(ep.config)
        if ep.jump is not None:
            options["tunnel"] = await self._pool.host(ep.jump).tunnel()
        if ep.proxy_command:
            options["proxy_command"] = ep.proxy_command
        with anyio.fail_after(self.limits.connect_timeout * 2):
            return await asyncssh.connect(
                ep.host, keepalive_interval=self.limits.keepalive, keepalive_count_max=3,
                connect_timeout=self.limits.connect_timeout, **options)

    def _explain(self, error: BaseException) -> SSHError:
        ep = self.endpoint
        if isinstance(error, asyncssh.HostKeyNotVerifiable):
            return _host_key_error(ep)
        if isinstance(error, asyncssh.PermissionDenied):
            return SSHError(f"{ep}: authentication failed (check user and identity file, "
                            "or load the key into ssh-agent)")
        if isinstance(error, SSHError):
            return error
        reason = getattr(error, "strerror", None) or getattr(error, "reason", None) or str(error)
        return SSHError(f"{ep}: unreachable: {reason or type(error).__name__}")

    async def tunnel(self) -> asyncssh.SSHClientConnection:
        """A live connection to this host, for others to tunnel through (no channel is held)."""
        async with self._changed:
            live = [c for c in self._conns if not c.dead]
            if live:
                return live[0].conn
        async with self._lease() as conn:
            return conn.conn

    def _drop(self, conn: _Connection) -> None:
        if not conn.dead:
            conn.dead = True
            self.stats.lost += 1
            conn.conn.close()
        if conn in self._conns:
            self._conns.remove(conn)

    @contextlib.asynccontextmanager
    async def _lease(self) -> AsyncIterator[_Connection]:
        """Reserve one channel on some connection, opening a new connection when all are full."""
        conn = await self._acquire()
        try:
            yield conn
        finally:
            with anyio.CancelScope(shield=True):
                async with self._changed:
                    conn.in_use -= 1
                    self._changed.notify_all()

    async def _acquire(self) -> _Connection:
        while True:
            async with self._changed:
                while True:
                    for conn in [c for c in self._conns if c.conn.is_closed()]:
                        self._drop(conn)
                    usable = [c for c in self._conns if not c.dead and c.in_use < c.budget]
                    if usable:
                        conn = min(usable, key=lambda c: c.in_use)
                        conn.in_use += 1
                        return conn
                    if self._failure is not None and not self._conns and (
                            anyio.current_time() - self._failed_at < _FAILURE_MEMORY):
                        raise self._failure
                    if len(self._conns) < self.limits.connections and not self._connecting:
                        self._connecting = True
                        break
                    await self._changed.wait()
            new: _Connection | None = None
            try:
                new = await self._connect()
            except SSHError as error:
                self._failure, self._failed_at = error, anyio.current_time()
                raise
            finally:
                with anyio.CancelScope(shield=True):
                    async with self._changed:
                        self._connecting = False
                        if new is not None:
                            self._failure = None
                            self._conns.append(new)
                        self._changed.notify_all()

    async def _refused(self, conn: _Connection, attempt: int) -> None:
        """The server refused a channel: shrink this connection's budget and back off."""
        self.stats.refusals += 1
        async with self._changed:
            conn.budget = max(1, conn.budget - 1)
        await anyio.sleep(min(1.0, 0.01 * math.pow(2, attempt)))

    # -- channels ------------------------------------------------------------------------------

    @contextlib.asynccontextmanager
    async def process(self, command: str) -> AsyncIterator[asyncssh.SSHClientProcess]:
        """An exec channel running `command`, bytes in and out. Retries refused channels."""
        attempt = 0
        while True:
            async with self._lease() as conn:
                try:
                    process = await conn.conn.create_process(command, encoding=None)
                except asyncssh.ChannelOpenError:
                    refused = conn
                except LOST_ERRORS as error:
                    self._drop(conn)
                    raise ConnectionLostError(
                        f"{self.endpoint}: connection lost: {error}") from None
                else:
                    self.stats.channels += 1
                    try:
                        yield process
                    except LOST_ERRORS as error:
                        self._drop(conn)
                        raise ConnectionLostError(
                            f"{self.endpoint}: connection lost: {error}") from None
                    finally:
                        process.close()
                    return
            await self._refused(refused, attempt)
            attempt += 1

    async def run(self, command: str, input: bytes | None = None) -> Completed:
        """Run a command to completion and collect its output."""
        async with self.process(command) as proc:
            try:
                stdout, stderr = await proc.communicate(input)
            except LOST_ERRORS as error:
                raise ConnectionLostError(f"{self.endpoint}: connection lost: {error}") from None
            status = proc.exit_status
            if status is None:
                raise ConnectionLostError(f"{self.endpoint}: channel closed before exit status")
        return Completed(status, stdout or b"", stderr or b"")

    async def aclose(self) -> None:
        for conn in list(self._conns):
            conn.dead = True
            conn.conn.close()
        for conn in list(self._conns):
            with anyio.move_on_after(2):
                await conn.conn.wait_closed()
        self._conns.clear()


class SSHPool:
    """All host pools of an engine, keyed by endpoint; closing it closes every connection."""

    def __init__(self, limits: Limits | None = None) -> None:
        self.limits = limits or Limits()
        self._hosts: dict[Endpoint, HostPool] = {}

    def host(self, endpoint: Endpoint) -> HostPool:
        if endpoint not in self._hosts:
            self._hosts[endpoint] = HostPool(endpoint, self.limits, self)
        return self._hosts[endpoint]

    def stats(self) -> Stats:
        total = Stats()
        for pool in self._hosts.values():
            for field in attrs.fields(Stats):
                setattr(total, field.name,
                        getattr(total, field.name) + getattr(pool.stats, field.name))
        return total

    async def aclose(self) -> None:
        # Nodes first: their connections tunnel through the jump hosts' connections.
        pools = sorted(self._hosts.values(), key=lambda p: p.endpoint.jump is None)
        for pool in pools:
            await pool.aclose()

    async def __aenter__(self) -> SSHPool:
        return self

    async def __aexit__(self, *exc: object) -> None:
        with anyio.CancelScope(shield=True):
            await self.aclose()


def _transient(error: BaseException) -> bool:
    """Failures worth another handshake: resets and drops (MaxStartups), not auth or keys."""
    if isinstance(error, (asyncssh.HostKeyNotVerifiable, asyncssh.PermissionDenied, SSHError)):
        return False
    if isinstance(error, (ConnectionRefusedError, OSError)) and getattr(error, "errno", None) in (
            111, 113, -2, -3, -5):  # refused, no route, unknown host names
        return False
    return isinstance(error, (OSError, asyncssh.ConnectionLost, asyncssh.DisconnectError,
                              TimeoutError))


def _host_key_error(ep: Endpoint) -> HostKeyError:
    """Say whether the key is unknown or changed, and what to do about each."""
    path = ep.known_hosts or "~/.ssh/known_hosts"
    known = False
    name = ep.host if not ep.port or ep.port == 22 else f"[{ep.host}]:{ep.port}"
    try:
        trusted = asyncssh.read_known_hosts(_expand(path)).match(ep.host, "", ep.port or 22)
        known = bool(trusted[0] or trusted[1])
    except (OSError, ValueError, asyncssh.Error):
        pass
    if known:
        return HostKeyError(
            f"{ep}: host key CHANGED: it differs from the key recorded in {path}. This may be an "
            "attack, or the host was reinstalled; verify with the administrator, then remove "
            f"the old entry (ssh-keygen -R '{name}' -f {path})")
    return HostKeyError(
        f"{ep}: host key unknown: {name} is not in {path}. Connect once with `ssh` to "
        "verify and record it, or add it with ssh-keyscan after checking its fingerprint")


def _expand(path: str) -> str:
    return os.path.expanduser(path)
