"""The raw asyncssh loop the benches compare with: `true` over 8 channels on each of the 3
test-bed nodes, connecting to them directly (or through a jump host, as `runaway batch` with
`reach: ssh` does). What a user would write instead of runaway; run as a script
(`python -m bench.raw_loop USER KEY KNOWN_HOSTS N [JUMP]`), it is timed as they would run it,
interpreter start and asyncssh's import included, like `runaway batch` is."""

from __future__ import annotations

import asyncio
import sys

import asyncssh

NODES = ("node1", "node2", "node3")
CHANNELS = 8  # per node: the engine's default channel budget


async def loop(user: str, key: str, known_hosts: str, n: int, jump: str = "") -> None:
    options = {"username": user, "client_keys": [key], "known_hosts": known_hosts}
    via = await asyncssh.connect(jump, **options) if jump else None
    conns = [await asyncssh.connect(node, tunnel=via, **options) for node in NODES]
    remaining = n

    async def worker(conn) -> None:
        nonlocal remaining
        while remaining > 0:
            remaining -= 1
            done = await conn.run("true")
            assert done.exit_status == 0

    await asyncio.gather(*[worker(c) for c in conns for _ in range(CHANNELS)])
    for conn in conns:
        conn.close()
    if via is not None:
        via.close()


if __name__ == "__main__":
    asyncio.run(loop(*sys.argv[1:4], int(sys.argv[4]), *sys.argv[5:6]))
