"""SSH connection pools over asyncssh: pool -> connection -> channel.

One `HostPool` per endpoint keeps a few connections and hands out channels, staying a margin
below sshd's MaxSessions (`max_channels`, default 8 of sshd's 10). More connections are opened
one handshake at a time (sshd's MaxStartups drops bursts of handshakes). A refused channel is
back-pressure: the connection's budget shrinks and the open is retried, never failed. A dead
connection is dropped and replaced with backoff. Nodes behind a login host are reached with
asyncssh's `tunnel=` over a pooled connection to that host: the profile's jump host, else the
ProxyJump chain of the SSH config (resolved in ssh_config.py, so that every node behind a jump
host shares its connection and an error names the hop that failed).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import math
import os
import socket
import sys
from typing import TYPE_CHECKING, AsyncIterator

import anyio
import attrs

from liborchestra import sshimport
from liborchestra.errors import ConnectionLostError, HostKeyError, SSHError
from liborchestra.lazy import LazyModule

if TYPE_CHECKING:
    from liborchestra.ssh_config import HostConfig

# a tenth of a second at start, which local work never needs
asyncssh = LazyModule("asyncssh", sshimport.import_module)
ssh_config = LazyModule("liborchestra.ssh_config", sshimport.import_module)  # asyncssh's reader

log = logging.getLogger(__name__)
PIPE_ERRORS = (BrokenPipeError, ConnectionResetError, EOFError)  # a local pipe's


def lost_errors() -> tuple[type[BaseException], ...]:
    """What a dropped connection or pipe raises (`except lost_errors()`): a function, so that
    asyncssh is imported only by work that uses it (before that, none of its errors can be
    raised)."""
    if "asyncssh" not in sys.modules:
        return PIPE_ERRORS
    return _ssh_lost_errors()


def _ack_at_once(conn: asyncssh.SSHClientConnection) -> None:
    """Acknowledge the server's next segment at once (TCP_QUICKACK), called just after a
    connection's first channel request has left. sshd leaves Nagle's algorithm on for
    channels without a terminal: after the first request of a connection, it holds its
    answer until its last segment is acknowledged, and Linux delays that acknowledgement by
    40 ms when it has nothing to send back (later requests were not held). Measured on the
    test bed: a connection's first channel took 46-50 ms, 4-6 ms with this. Through a jump
    host this acknowledges the jump host's segments only; the node's wait is `_nudge`'s.
    Best effort: no TCP_QUICKACK (not Linux) leaves it as it was."""
    sock = conn.get_extra_info("socket")
    with contextlib.suppress(AttributeError, OSError):
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_QUICKACK, 1)


def _nudge(made: list[asyncssh.SSHClientConnection], *_: object) -> None:
    """Send the server one message it ignores (SSH debug) once its host keys have come, the
    last of what OpenSSH sends after login. Through a jump host (or a ProxyCommand), the
    node's sshd holds its next answer until the jump host acknowledges that, and the jump
    host acknowledges only with data it forwards, after 40 ms otherwise: this is that data.
    Test bed, a node behind the login host: its first channel took 46-49 ms, 4.5-5.5 with
    this. Called by asyncssh with what changed in the host keys, which is not used."""
    if made:
        made[0].send_debug("")


@functools.lru_cache(maxsize=1)
def _ssh_lost_errors() -> tuple[type[BaseException], ...]:
    return (asyncssh.ConnectionLost, asyncssh.DisconnectError, *PIPE_ERRORS)
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
    requested: bool = False  # a channel was asked for on it (the first one: `_ack_at_once`)


class HostPool:
    """Connections to one endpoint and the channel budget over them."""

    def __init__(self, endpoint: Endpoint, limits: Limits, pool: SSHPool) -> None:
        self.endpoint, self.limits, self._pool = endpoint, limits, pool
        self._conns: list[_Connection] = []
        self._changed = anyio.Condition()
        self._connecting = False
        self._failure: SSHError | None = None
        self._failed_at = 0.0
        self._found: HostConfig | None = None
        self.via: Endpoint | None = endpoint.jump  # the jump host, once known
        self.stats = Stats()

    # -- connections ---------------------------------------------------------------------------

    async def _connect(self) -> _Connection:
        """Open one connection, retrying transient failures with backoff."""
        delay = 0.2
        for attempt in range(self.limits.connect_attempts):
            try:
                conn = await self._open()
            except (OSError, asyncssh.Error, asyncssh.KeyImportError, TimeoutError) as error:
                if not _transient(error) or attempt == self.limits.connect_attempts - 1:
                    raise await self._explain(error) from None
                log.debug("connect to %s failed (%s), retrying", self.endpoint, error)
                await anyio.sleep(delay)
                delay *= 2
            else:
                self.stats.connects += 1
                return _Connection(conn, budget=self.limits.channels)
        raise AssertionError("unreachable")

    def _resolve(self) -> HostConfig:
        """The SSH config's word on this host (read once per pool)."""
        if self._found is None:
            ep = self.endpoint
            self._found = ssh_config.resolve(ep.host, ep.port, ep.user, ep.config)
            if ep.jump is None and ep.proxy_command is None:
                self.via = config_jump(ep, self._found)
        return self._found

    async def _through(self, jump: Endpoint) -> asyncssh.SSHClientConnection:
        """A connection to the jump host; its failure is reported as the jump host's."""
        try:
            return await self._pool.host(jump).tunnel()
        except SSHError as error:
            raise _hop_error(error, self.endpoint.host) from None

    async def _open(self) -> asyncssh.SSHClientConnection:
        ep, options = self.endpoint, {"ignore_encrypted": True}
        found = self._resolve()
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
        if self.via is not None:
            options["tunnel"] = await self._through(self.via)
        if ep.proxy_command:
            options["proxy_command"] = ep.proxy_command
        if not found.ciphers:  # the user's `Ciphers` wins; else the cheapest first
            options["encryption_algs"] = _ciphers()
        made: list[asyncssh.SSHClientConnection] = []
        if "tunnel" in options or ep.proxy_command:  # not on a socket of its own
            options["server_host_keys_handler"] = functools.partial(_nudge, made)
        with anyio.fail_after(self.limits.connect_timeout * 2):
            conn = await asyncssh.connect(
                ep.host, keepalive_interval=self.limits.keepalive, keepalive_count_max=3,
                connect_timeout=self.limits.connect_timeout, **options)
        made.append(conn)
        return conn

    def _who(self) -> str:
        ep = self.endpoint
        return f"{ep} via {self.via}" if self.via is not None and ep.jump is None else str(ep)

    async def _explain(self, error: BaseException) -> SSHError:
        ep, who = self.endpoint, self._who()
        if isinstance(error, asyncssh.HostKeyNotVerifiable):
            return _host_key_error(ep, self._found, who)
        if isinstance(error, asyncssh.PermissionDenied):
            why = await ssh_config.encrypted_key_problem(ep.identities, self._found)
            return _failure(SSHError, who, "authentication failed: " + (
                why or "check user and identity file, or load the key into ssh-agent"))
        if isinstance(error, SSHError):
            return error
        if isinstance(error, asyncssh.KeyImportError):
            return _failure(SSHError, who, f"cannot use an identity file: {error}")
        if isinstance(error, (FileNotFoundError, PermissionError)) and error.filename:
            return _failure(SSHError, who, f"cannot read {error.filename}: {error.strerror}")
        reason = getattr(error, "strerror", None) or getattr(error, "reason", None) or str(error)
        if isinstance(error, asyncssh.ChannelOpenError) and self.via is not None:
            return _failure(SSHError, who, f"unreachable from {self.via.host}: {reason}")
        return _failure(SSHError, who, f"unreachable: {reason or type(error).__name__}")

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
                if not conn.requested:
                    conn.requested = True
                    asyncio.get_running_loop().call_soon(_ack_at_once, conn.conn)
                try:
                    process = await conn.conn.create_process(command, encoding=None)
                except asyncssh.ChannelOpenError:
                    refused = conn
                except lost_errors() as error:
                    self._drop(conn)
                    raise ConnectionLostError(
                        f"{self.endpoint}: connection lost: {error}") from None
                else:
                    self.stats.channels += 1
                    try:
                        yield process
                    except lost_errors() as error:
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
            except lost_errors() as error:
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

    def _depth(self, pool: HostPool) -> int:
        depth, via = 0, pool.via
        while via is not None and depth < ssh_config.MAX_HOPS:
            depth += 1
            via = self._hosts[via].via if via in self._hosts else via.jump
        return depth

    async def aclose(self) -> None:
        # Nodes first: their connections tunnel through the jump hosts' connections.
        pools = sorted(self._hosts.values(), key=self._depth, reverse=True)
        for pool in pools:
            await pool.aclose()

    async def __aenter__(self) -> SSHPool:
        return self

    async def __aexit__(self, *exc: object) -> None:
        with anyio.CancelScope(shield=True):
            await self.aclose()


def config_jump(ep: Endpoint, found: HostConfig, seen: tuple[str, ...] = ()) -> Endpoint | None:
    """The last hop of the config's ProxyJump chain for `ep` (each hop an Endpoint through the
    one before it; the first through its own ProxyJump), or None. Hops inherit the profile's
    identities, known_hosts and config files, as nodes behind the profile's jump host do."""
    if not found.proxy_jump:
        return None
    seen = (*seen, ep.host)
    hop: Endpoint | None = None
    for user, host, port in ssh_config.jump_hops(found.proxy_jump):
        if host in seen or len(seen) > ssh_config.MAX_HOPS:
            raise SSHError(f"{seen[0]}: ProxyJump loop in the ssh config: "
                           f"{' -> '.join((*seen, host))} ({', '.join(found.files)})")
        nxt = Endpoint(host=host, port=port, user=user, identities=ep.identities,
                       known_hosts=ep.known_hosts, config=ep.config, jump=hop)
        if hop is None:  # the first hop is reached through its own ProxyJump, if any
            first = ssh_config.resolve(host, port, user, ep.config)
            nxt = attrs.evolve(nxt, jump=config_jump(nxt, first, seen))
        seen, hop = (*seen, host), nxt
    return hop


def _failure(kind: type[SSHError], who: str, problem: str) -> SSHError:
    """An error whose parts are kept, so that a hop's failure can be told as the hop's."""
    error = kind(f"{who}: {problem}")
    error.who, error.problem, error.behind = who, problem, ()
    return error


def _hop_error(error: SSHError, behind: str) -> SSHError:
    """`error` of a jump host, told from the host behind it: `login (jump host for node2): ...`."""
    if not hasattr(error, "problem"):
        return type(error)(f"{error} (jump host for {behind})")
    hops = (*error.behind, behind)
    path = hops[0] + "".join(f", on the way to {h}" for h in hops[1:])
    wrapped = type(error)(f"{error.who} (jump host for {path}): {error.problem}")
    wrapped.who, wrapped.problem, wrapped.behind = error.who, error.problem, hops
    return wrapped


def _transient(error: BaseException) -> bool:
    """Failures worth another handshake: resets and drops (MaxStartups), not auth or keys."""
    if isinstance(error, (asyncssh.HostKeyNotVerifiable, asyncssh.PermissionDenied, SSHError,
                          asyncssh.KeyImportError, FileNotFoundError, PermissionError)):
        return False
    if isinstance(error, (ConnectionRefusedError, OSError)) and getattr(error, "errno", None) in (
            111, 113, -2, -3, -5):  # refused, no route, unknown host names
        return False
    return isinstance(error, (OSError, asyncssh.ConnectionLost, asyncssh.DisconnectError,
                              TimeoutError))


@functools.lru_cache(maxsize=1)
def _ciphers() -> list[str]:
    """asyncssh's ciphers with AES-GCM first: asyncssh prefers ChaCha20 (right for OpenSSH's C
    on machines without AES instructions), but in asyncssh it builds cipher objects for every
    packet. A small frame each way took 408 us of CPU with ChaCha20 and 238 us with AES-GCM
    (the bed's login, 3,000 round trips); a node agent sends about three per execution."""
    from asyncssh.encryption import get_default_encryption_algs
    default = [alg.decode() for alg in get_default_encryption_algs()]
    first = [alg for alg in ("aes128-gcm@openssh.com", "aes256-gcm@openssh.com") if alg in default]
    return first + [alg for alg in default if alg not in first]


def _host_key_error(ep: Endpoint, found: HostConfig | None, who: str) -> HostKeyError:
    """Say whether the key is unknown or changed, and what to do about each."""
    path = ep.known_hosts or (found.known_hosts[0] if found and found.known_hosts
                              else "~/.ssh/known_hosts")
    host = found.hostname if found else ep.host
    port = ep.port or (found.port if found else 22)
    known = False
    name = host if port == 22 else f"[{host}]:{port}"
    try:
        trusted = asyncssh.read_known_hosts(_expand(path)).match(host, "", port)
        known = bool(trusted[0] or trusted[1])
    except (OSError, ValueError, asyncssh.Error):
        pass
    if known:
        return _failure(HostKeyError, who,
            f"host key CHANGED: it differs from the key recorded in {path}. This may be an "
            "attack, or the host was reinstalled; verify with the administrator, then remove "
            f"the old entry (ssh-keygen -R '{name}' -f {path})")
    return _failure(HostKeyError, who,
        f"host key unknown: {name} is not in {path}. Connect once with `ssh` to "
        "verify and record it, or add it with ssh-keyscan after checking its fingerprint")


def _expand(path: str) -> str:
    return os.path.expanduser(path)
