"""`runaway check`: is a profile usable? One verdict per step, each with its time.

Steps stop at the first failure of a host, since later steps cannot succeed without it.
"""

from __future__ import annotations

import time
from typing import AsyncIterator, Callable

import anyio
import attrs

from liborchestra.engine import Engine
from liborchestra.errors import HostKeyError, OrchestraError, SSHError
from liborchestra.profile import Profile
from liborchestra.shell import Shell
from liborchestra.ssh import Endpoint
from liborchestra.transfer import remote_path


@attrs.frozen
class CheckLine:
    step: str
    ok: bool
    detail: str
    seconds: float


async def check_profile(profile: Profile, report: Callable[[CheckLine], None]) -> bool:
    """Report one CheckLine per step (hosts reachable, host keys, auth, directory, slots);
    True when every step passed."""
    failed = False

    def note(line: CheckLine) -> None:
        nonlocal failed
        failed = failed or not line.ok
        report(line)

    async with Engine(profile) as engine:
        await _steps(profile, engine, note)
    return not failed


async def _steps(profile: Profile, engine: Engine, report: Callable[[CheckLine], None]) -> None:
    report(CheckLine("profile", True, f"{profile.source} ({profile.scheduler.kind})", 0.0))
    login = engine.scheduler.login()
    if login is not None and not await _host_ok(engine, login, report):
        return
    start = time.perf_counter()
    try:
        allocations = await engine.allocate()
    except OrchestraError as error:
        report(CheckLine("allocation", False, str(error), time.perf_counter() - start))
        return
    ids = ", ".join(a.id for a in allocations)
    report(CheckLine("allocation", True, f"{engine.scheduler.kind} granted {ids}",
                     time.perf_counter() - start))
    nodes = [n for a in allocations for n in a.nodes]
    for node in nodes:
        if node.endpoint is not None and not await _host_ok(engine, node.endpoint, report):
            break
    else:
        for node in {n.filesystem: n for n in nodes}.values():
            report(await _check_directory(engine.shell(node), profile.directory))
        slots = sum(len(n.handles) for n in nodes)
        detail = ", ".join(f"{n.name}: {len(n.handles)}" for n in nodes)
        report(CheckLine("slots", slots > 0, f"{slots} on {len(nodes)} node(s) ({detail})", 0.0))
    start = time.perf_counter()
    await engine.allocator.release_all()
    report(CheckLine("released", True, ids, time.perf_counter() - start))


async def _host_ok(engine: Engine, endpoint: Endpoint,
                   report: Callable[[CheckLine], None]) -> bool:
    lines = [line async for line in _check_host(engine, endpoint)]
    for line in lines:
        report(line)
    return all(line.ok for line in lines)


async def _check_host(engine: Engine, endpoint: Endpoint) -> AsyncIterator[CheckLine]:
    start = time.perf_counter()
    host = engine.pool.host(endpoint)
    try:
        with anyio.fail_after(engine.pool.limits.connect_timeout * 3):
            done = await host.run("true")
    except HostKeyError as error:
        yield CheckLine(f"reachable {endpoint.host}", True, "", time.perf_counter() - start)
        yield CheckLine(f"host key {endpoint.host}", False, str(error), 0.0)
        return
    except SSHError as error:
        step = "auth" if "authentication" in str(error) else "reachable"
        if step == "auth":
            yield CheckLine(f"reachable {endpoint.host}", True, "", 0.0)
            yield CheckLine(f"host key {endpoint.host}", True, "known", 0.0)
        yield CheckLine(f"{step} {endpoint.host}", False, str(error), time.perf_counter() - start)
        return
    except TimeoutError:
        yield CheckLine(f"reachable {endpoint.host}", False, "timed out",
                        time.perf_counter() - start)
        return
    seconds = time.perf_counter() - start
    yield CheckLine(f"reachable {endpoint.host}", True, str(endpoint), seconds)
    yield CheckLine(f"host key {endpoint.host}", True, "known", 0.0)
    yield CheckLine(f"auth {endpoint.host}", done.returncode == 0, "", 0.0)


async def _check_directory(shell: Shell, directory: str) -> CheckLine:
    start = time.perf_counter()
    root = remote_path(directory)
    probe = f"{root}/.check-$$"
    try:
        done = await shell.run(f"mkdir -p {root} && touch {probe} && rm -f {probe}")
    except SSHError as error:
        return CheckLine(f"directory on {shell.name}", False, str(error), 0.0)
    detail = directory if done.returncode == 0 else done.stderr.decode(errors="replace").strip()
    return CheckLine(f"directory on {shell.name}", done.returncode == 0, detail,
                     time.perf_counter() - start)
