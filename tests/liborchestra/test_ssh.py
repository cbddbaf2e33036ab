"""SSH pools against real sshd: back-pressure, host keys, lost connections (test bed)."""

from __future__ import annotations

import asyncio
import subprocess

import anyio
import attrs
import pytest

from liborchestra import Engine, Execution, State
from liborchestra.errors import HostKeyError, SSHError
from liborchestra.ssh import Endpoint, Limits, SSHPool
from tests.helpers import load, stock_profile, write_script

pytestmark = pytest.mark.integration


def run(coro):
    return anyio.run(lambda: coro, backend="asyncio")


def endpoint(testbed, known_hosts=None, **kw):
    return Endpoint(host="127.0.0.1", port=testbed.local_port, user=testbed.user,
                    identities=(str(testbed.key),),
                    known_hosts=str(known_hosts or testbed.known_hosts), **kw)


def test_fifty_concurrent_executions_against_stock_limits(testbed, tmp_path):
    """MaxSessions 10 and MaxStartups 10:30:100: channels stay under budget, 0 failures."""
    profile = load(stock_profile(testbed, tmp_path, slots=50))
    script = write_script(tmp_path / "code", "job.sh", 'sleep 0.3; echo "$1"\n')

    async def main():
        async with Engine(profile) as engine:
            results = await asyncio.gather(*[
                engine.submit(Execution(script, [str(i)], output=tmp_path / f"o{i}"))
                for i in range(50)])
            return results, engine.pool.stats()

    results, stats = run(main())
    assert [r.state for r in results] == [State.COMPLETED] * 50
    assert [(tmp_path / f"o{i}/stdout").read_text() for i in range(50)] == \
        [f"{i}\n" for i in range(50)]
    assert 1 <= stats.connects <= 4


def test_many_channels_on_one_connection_are_back_pressure_not_failure(testbed):
    """A budget above MaxSessions gets refusals; they are retried, never surfaced."""
    async def main():
        async with SSHPool(Limits(channels=16, connections=1)) as pool:
            host = pool.host(endpoint(testbed))
            done = await asyncio.gather(*[host.run("sleep 0.5; echo ok") for _ in range(24)])
            return done, host.stats

    done, stats = run(main())
    assert all(d.returncode == 0 and d.stdout == b"ok\n" for d in done)
    assert stats.refusals > 0 and stats.connects == 1


def _known_hosts_with_wrong_key(testbed, tmp_path):
    key = tmp_path / "other_key"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)], check=True)
    pub = (tmp_path / "other_key.pub").read_text().split()
    path = tmp_path / "known_hosts"
    path.write_text(f"[127.0.0.1]:{testbed.local_port} {pub[0]} {pub[1]}\n")
    return path


def test_changed_host_key_is_refused_with_advice(testbed, tmp_path):
    known = _known_hosts_with_wrong_key(testbed, tmp_path)

    async def main():
        async with SSHPool() as pool:
            await pool.host(endpoint(testbed, known_hosts=known)).run("true")

    with pytest.raises(HostKeyError, match="CHANGED.*ssh-keygen -R"):
        run(main())


def test_unknown_host_key_is_refused_with_advice(testbed, tmp_path):
    empty = tmp_path / "known_hosts"
    empty.write_text("")

    async def main():
        async with SSHPool() as pool:
            await pool.host(endpoint(testbed, known_hosts=empty)).run("true")

    with pytest.raises(HostKeyError, match="unknown.*not in"):
        run(main())


def test_auth_failure_and_unreachable_host(testbed, tmp_path):
    other = tmp_path / "k"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(other)], check=True)

    async def attempt(ep):
        async with SSHPool(Limits(connect_timeout=3)) as pool:
            await pool.host(ep).run("true")

    wrong_key = Endpoint(host="127.0.0.1", port=testbed.local_port, user=testbed.user,
                         identities=(str(other),), known_hosts=str(testbed.known_hosts))
    with pytest.raises(SSHError, match="authentication failed"):
        run(attempt(wrong_key))
    closed = Endpoint(host="127.0.0.1", port=1, user="x", known_hosts=str(testbed.known_hosts))
    with pytest.raises(SSHError, match="unreachable"):
        run(attempt(closed))


def test_dropped_connections_do_not_lose_running_executions(testbed, tmp_path):
    """Kill hpcuser's sshd session processes mid-run: the engine reconnects and reattaches."""
    profile = load(stock_profile(testbed, tmp_path, slots=4))
    script = write_script(tmp_path / "code", "job.sh", 'sleep 2; echo "done $1"\n')

    async def main():
        async with Engine(profile) as engine:
            futures = [engine.submit(Execution(script, [str(i)], output=tmp_path / f"o{i}"))
                       for i in range(4)]
            await anyio.sleep(1.0)
            listener = (testbed.dir / "run" / "sshd-local.pid").read_text().strip()
            subprocess.run(["pkill", "-P", listener], check=True)  # this sshd's sessions only
            return await asyncio.gather(*futures), engine.pool.stats()

    results, stats = run(main())
    assert [r.state for r in results] == [State.COMPLETED] * 4
    assert [(tmp_path / f"o{i}/stdout").read_text() for i in range(4)] == \
        [f"done {i}\n" for i in range(4)]
    assert stats.connects >= 2  # it really had to reconnect


def test_aes_gcm_is_chosen_unless_the_config_says_which_ciphers(testbed, tmp_path):
    """asyncssh prefers ChaCha20, which costs it nearly twice the CPU per packet; the pool puts
    AES-GCM first, but a `Ciphers` line of the user's config is obeyed."""
    config = tmp_path / "ssh_config"
    config.write_text("Host strict\n    HostName 127.0.0.1\n    Ciphers aes256-ctr\n")
    strict = endpoint(testbed, config=(str(config),))

    async def main():
        async with SSHPool() as pool:
            return [(await pool.host(ep).tunnel()).get_extra_info("send_cipher")
                    for ep in (endpoint(testbed), attrs.evolve(strict, host="strict"))]

    assert run(main()) == ["aes128-gcm@openssh.com", "aes256-ctr"]
