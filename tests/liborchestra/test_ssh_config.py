"""SSH as users have it, on the test bed: a ProxyJump chain in ~/.ssh/config (this machine ->
login -> node), Include and Match, keys held only by ssh-agent, an encrypted key, and errors
that name the hop that failed.

The nodes' second sshd (tests/testbed/jump-sshd.sh, port 2200) accepts hpcuser only from login:
a node on that port is reached only through login. Every test runs with a HOME of its own (its
~/.ssh/config, no keys unless the test puts them there) and without the caller's ssh-agent.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import pwd
import shutil
import subprocess
import sys
import textwrap
import time
import uuid
from pathlib import Path

import anyio
import pytest

from liborchestra.errors import SSHError
from liborchestra.ssh import Endpoint, Limits, SSHPool
from tests.helpers import write_profile, write_script

pytestmark = pytest.mark.integration
REPO = Path(__file__).resolve().parents[2]
REPORT = "hostname; echo $SSH_CONNECTION"  # who answered, and from which address and port


def run(coro):
    return anyio.run(lambda: coro, backend="asyncio")


@pytest.fixture
def jump_port(testbed) -> int:
    """The bed's second sshd (nodes: only from login), started if a host lost it."""
    port = json.loads((testbed.dir / "testbed.json").read_text()).get("jump_port", 2200)
    for host in testbed.hosts:
        if not testbed.on(host, "ss", "-Hltn", f"sport = :{port}").stdout.strip():
            subprocess.run([str(REPO / "tests/testbed/jump-sshd.sh"), "start"], check=True,
                           env={**os.environ, "TB": str(testbed.dir)}, capture_output=True)
            break
    return port


@pytest.fixture
def home(tmp_path, monkeypatch) -> Path:
    """A HOME with an empty ~/.ssh, and no ssh-agent."""
    path = tmp_path / "home"
    (path / ".ssh").mkdir(parents=True, mode=0o700)
    monkeypatch.setenv("HOME", str(path))
    monkeypatch.delenv("SSH_AUTH_SOCK", raising=False)
    return path


def ssh_config(home: Path, text: str, name: str = "config") -> Path:
    path = home / ".ssh" / name
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    path.write_text(textwrap.dedent(text))
    return path


def cluster_config(testbed, port: int, identity: bool = True, jump: str = "tb-login") -> str:
    """login on :port; tb-node1..3 on :port, reachable only through `jump`."""
    nodes = " ".join(f"tb-{n}" for n in testbed.nodes)
    names = "".join(f"Host tb-{n}\n    HostName {n}\n" for n in testbed.nodes)
    key = f"    IdentityFile {testbed.key}\n" if identity else ""
    return (f"Host tb-login\n    HostName login\n    Port {port}\n"
            f"Host {nodes}\n    ProxyJump {jump}\n    Port {port}\n{names}"
            f"Host *\n    User {testbed.user}\n{key}"
            f"    UserKnownHostsFile {testbed.known_hosts}\n")


async def report(pool: SSHPool, *hosts: str, **endpoint) -> list[list[str]]:
    out = []
    for host in hosts:
        done = await pool.host(Endpoint(host=host, **endpoint)).run(REPORT)
        assert done.returncode == 0, done.stderr
        out.append(done.stdout.decode().split())
    return out


def via_login(testbed, port: int, node: str, words: list[str]) -> bool:
    """hostname + $SSH_CONNECTION say: `node`, reached from login's address on `port`."""
    return (words[0], words[1], words[4]) == (node, testbed.hosts["login"], str(port))


@contextlib.contextmanager
def ssh_agent(tmp_path: Path):
    """A real ssh-agent of this test (killed after); yields its socket."""
    sock = tmp_path / f"agent-{uuid.uuid4().hex[:6]}.sock"
    agent = subprocess.Popen(["ssh-agent", "-D", "-a", str(sock)], stdout=subprocess.DEVNULL,
                             stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 10
        while not sock.exists():
            assert agent.poll() is None and time.monotonic() < deadline, "ssh-agent did not start"
            time.sleep(0.02)
        yield str(sock)
    finally:
        agent.kill()
        agent.wait(timeout=10)


def ssh_add(sock: str, key: Path, passphrase: str | None = None) -> None:
    """ssh-add, the passphrase given by an SSH_ASKPASS script as a desktop would."""
    env = {"PATH": os.environ["PATH"], "SSH_AUTH_SOCK": sock}
    if passphrase is not None:
        askpass = key.parent / "askpass.sh"
        askpass.write_text(f"#!/bin/sh\necho '{passphrase}'\n")
        askpass.chmod(0o700)
        env.update(SSH_ASKPASS=str(askpass), SSH_ASKPASS_REQUIRE="force", DISPLAY=":0")
    done = subprocess.run(["ssh-add", str(key)], env=env, stdin=subprocess.DEVNULL,
                          capture_output=True, text=True, timeout=30)
    assert done.returncode == 0, done.stderr


def make_key(folder: Path, passphrase: str = "") -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    key = folder / f"key-{uuid.uuid4().hex[:6]}"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", passphrase, "-C", "test key",
                    "-f", str(key)], check=True)
    return key


@contextlib.contextmanager
def authorized(testbed, pub: Path):
    """The key is authorized for this test only, by the bed's second sshds (they read
    ~/.ssh/authorized_keys.tests as well as authorized_keys)."""
    user = pwd.getpwnam(testbed.user)
    path = Path(user.pw_dir) / ".ssh" / "authorized_keys.tests"
    line = pub.read_text().strip()

    def edit(change):
        with open(testbed.dir / "run" / "authorized_keys.tests.lock", "a") as lock:  # xdist
            fcntl.flock(lock, fcntl.LOCK_EX)
            lines = path.read_text().splitlines() if path.exists() else []
            tmp = path.with_suffix(f".{uuid.uuid4().hex[:6]}")
            tmp.write_text("".join(f"{x}\n" for x in change(lines)))
            os.chown(tmp, user.pw_uid, user.pw_gid)
            tmp.chmod(0o600)
            tmp.replace(path)

    edit(lambda lines: [*lines, line])
    try:
        yield
    finally:
        edit(lambda lines: [x for x in lines if x != line])


def failure(coro) -> str:
    with pytest.raises(SSHError) as error:
        run(coro)
    return str(error.value)


# -- the bed --------------------------------------------------------------------------------------


def test_bed_nodes_on_the_jump_port_answer_only_through_login(testbed, jump_port):
    """What the other tests rely on, with plain OpenSSH."""
    direct = testbed.ssh("node1", "hostname", port=jump_port)
    assert direct.returncode == 255 and "Permission denied" in direct.stderr
    hop = " ".join(testbed.ssh_argv("login", port=jump_port)[:-1])
    argv = testbed.ssh_argv("node1", port=jump_port)
    through = subprocess.run([*argv[:-1], "-o", f"ProxyCommand={hop} -W %h:%p {testbed.user}"
                              f"@login", argv[-1], "hostname"], capture_output=True, text=True,
                             timeout=60, stdin=subprocess.DEVNULL)
    assert (through.returncode, through.stdout.strip()) == (0, "node1"), through.stderr


# -- ProxyJump, Include, Match --------------------------------------------------------------------


def test_runaway_exec_and_batch_through_the_proxyjump_chain_of_ssh_config(testbed, jump_port,
                                                                            home, tmp_path):
    """A profile names hosts as ~/.ssh/config does; User, Port, IdentityFile, known hosts and
    the ProxyJump chain all come from the config."""
    ssh_config(home, cluster_config(testbed, jump_port))
    profile = write_profile(tmp_path / "profiles", "aliases", {
        "scheduler": {"kind": "hosts", "hosts": [{"host": "tb-node1", "slots": 2},
                                                 {"host": "tb-node2", "slots": 2}]},
        "directory": f"~/.orchestra-tests/{uuid.uuid4().hex}"})
    script = write_script(tmp_path / "code", "where.sh", f"{REPORT}\n")
    env = {k: v for k, v in os.environ.items() if k != "SSH_AUTH_SOCK"}
    env["HOME"] = str(home)

    def runaway(*args):
        return subprocess.run([sys.executable, "-m", "runaway", *map(str, args)], cwd=tmp_path,
                              env=env, capture_output=True, text=True, timeout=180)

    done = runaway("exec", profile, script)
    assert done.returncode == 0, done.stderr
    words = done.stdout.split()
    assert via_login(testbed, jump_port, words[0], words), done.stdout
    done = runaway("batch", profile, script, "--name", "b", "--param", "i=1,2,3,4,5,6")
    assert done.returncode == 0, done.stderr
    outs = [p.read_text().split() for p in (tmp_path / "batch/b").glob("*/stdout")]
    assert len(outs) == 6
    assert all(via_login(testbed, jump_port, w[0], w) for w in outs), outs
    assert {w[0] for w in outs} <= {"node1", "node2"}


def test_slurm_profile_with_its_login_as_an_alias_and_nodes_set_by_match(testbed, jump_port,
                                                                         home, tmp_path):
    """`ssh.host: tb-login` and nothing else in the profile: Slurm's node names get their
    port from `Match host node*` and are reached through the profile's login host."""
    ssh_config(home, f"""\
        Host tb-login
            HostName login
        Match host node*
            Port {jump_port}
        Host *
            User {testbed.user}
            IdentityFile {testbed.key}
            UserKnownHostsFile {testbed.known_hosts}
        """)
    profile = write_profile(tmp_path / "profiles", "slurm-alias", {
        "ssh": {"host": "tb-login"},
        "scheduler": {"kind": "slurm", "nodes": 1, "walltime": "5m"},
        "directory": f"~/.orchestra-tests/{uuid.uuid4().hex}"})
    script = write_script(tmp_path / "code", "where.sh", f"{REPORT}\n")
    env = {k: v for k, v in os.environ.items() if k != "SSH_AUTH_SOCK"}
    done = subprocess.run([sys.executable, "-m", "runaway", "exec", str(profile), str(script)],
                          cwd=tmp_path, env={**env, "HOME": str(home)}, capture_output=True,
                          text=True, timeout=180)
    assert done.returncode == 0, done.stderr
    words = done.stdout.split()
    assert words[0] in testbed.nodes and via_login(testbed, jump_port, words[0], words), words


def test_one_pooled_connection_to_the_jump_host_for_all_nodes(testbed, jump_port, home):
    ssh_config(home, cluster_config(testbed, jump_port))

    async def main():
        async with SSHPool() as pool:
            got = await report(pool, *(f"tb-{n}" for n in testbed.nodes))
            return got, pool.stats()

    got, stats = run(main())
    assert [w[0] for w in got] == testbed.nodes
    assert all(via_login(testbed, jump_port, w[0], w) for w in got), got
    assert stats.connects == 1 + len(testbed.nodes)  # login once, then each node


def test_include_and_match_host_set_user_port_and_proxyjump(testbed, jump_port, home):
    """The nodes are named as Slurm names them; an included file's `Match host node*` sends
    them through login (on its ordinary port 22) to the jump-only port."""
    ssh_config(home, "Include config.d/*.conf\n")
    ssh_config(home, f"""\
        Host tb-login
            HostName login
            User {testbed.user}
        Match host node*
            User {testbed.user}
            Port {jump_port}
            ProxyJump tb-login
        Match all
            IdentityFile {testbed.key}
            UserKnownHostsFile {testbed.known_hosts}
        """, "config.d/cluster.conf")

    async def main():
        async with SSHPool() as pool:
            return await report(pool, "node1", "node3")

    first, third = run(main())
    assert via_login(testbed, jump_port, "node1", first), first
    assert via_login(testbed, jump_port, "node3", third), third


def test_proxycommand_in_the_config_is_used(testbed, jump_port, home):
    hop = " ".join(testbed.ssh_argv("login", port=jump_port))
    ssh_config(home, f"""\
        Host tb-node2
            HostName node2
            Port {jump_port}
            User {testbed.user}
            IdentityFile {testbed.key}
            UserKnownHostsFile {testbed.known_hosts}
            ProxyCommand {hop.replace(f"{testbed.user}@login", "")} -W %h:%p {testbed.user}@login
        """)

    async def main():
        async with SSHPool() as pool:
            return await report(pool, "tb-node2")

    (got,) = run(main())
    assert via_login(testbed, jump_port, "node2", got), got


def test_config_given_to_the_endpoint_instead_of_home(testbed, jump_port, tmp_path, home):
    """`config:` of a profile (Endpoint.config): ~/.ssh/config is then not read."""
    config = tmp_path / "cluster.ssh"
    config.write_text(cluster_config(testbed, jump_port))
    ssh_config(home, "Host *\n    Port 1\n")  # would break everything if it were read

    async def main():
        async with SSHPool() as pool:
            return await report(pool, "tb-node3", config=(str(config),))

    (got,) = run(main())
    assert via_login(testbed, jump_port, "node3", got), got


def test_unsupported_settings_each_get_one_line_naming_file_and_line(testbed, jump_port, home,
                                                                     caplog):
    config = ssh_config(home, cluster_config(testbed, jump_port) + textwrap.dedent("""\
        Host tb-node1
            StrictHostKeyChecking no
            ControlMaster auto
            ControlPath ~/.ssh/cm-%C
            LogLevel ERROR
            IdentityFiel ~/.ssh/typo
        """))
    lines = config.read_text().splitlines()

    async def main():
        async with SSHPool() as pool:
            first = await report(pool, "tb-node1")
            async with SSHPool() as again:  # a second pool: nothing said twice
                await report(again, "tb-node1")
            return first

    with caplog.at_level(logging.WARNING, logger="liborchestra"):
        (got,) = run(main())
    assert via_login(testbed, jump_port, "node1", got)  # the rest of the config still works
    said = [r.getMessage() for r in caplog.records]
    expected = {f"{config}, line {lines.index(f'    {opt}') + 1}: {opt} is not supported"
                for opt in ("StrictHostKeyChecking no", "ControlMaster auto",
                            "ControlPath ~/.ssh/cm-%C")}
    typo = f"{config}, line {lines.index('    IdentityFiel ~/.ssh/typo') + 1}: IdentityFiel is " \
        "not supported by orchestra's SSH client (asyncssh); ignored"
    assert sorted(m.split(" (")[0] for m in said) == sorted({*expected, typo.split(" (")[0]})
    assert "host keys are always checked" in " ".join(said) and typo in said, said


def test_a_config_asyncssh_refuses_is_one_error_naming_file_and_line(testbed, home):
    config = ssh_config(home, "Host tb-*\n    User x\nMatch sessiontype default\n    Port 2\n")

    async def main():
        async with SSHPool() as pool:
            await pool.host(Endpoint(host="tb-node1")).run("true")

    message = failure(main())
    assert f"{config} line 3" in message and "not supported" in message, message
    assert "\n" not in message


def test_proxyjump_loop_is_an_error_not_a_hang(testbed, home):
    ssh_config(home, "Host a\n    ProxyJump b\nHost b\n    ProxyJump a\n")

    async def main():
        async with SSHPool() as pool:
            with anyio.fail_after(20):
                await pool.host(Endpoint(host="a")).run("true")

    assert "ProxyJump loop in the ssh config: a -> b -> a" in failure(main())


# -- errors name the hop --------------------------------------------------------------------------


def test_jump_host_that_does_not_resolve_is_blamed_not_the_node(testbed, jump_port, home):
    ssh_config(home, cluster_config(testbed, jump_port, jump="login-typo"))

    async def main():
        async with SSHPool(Limits(connect_timeout=5)) as pool:
            await pool.host(Endpoint(host="tb-node2")).run("true")

    message = failure(main())
    assert message.startswith("login-typo (jump host for tb-node2): unreachable: "), message
    assert "Name or service not known" in message or "not known" in message, message


def test_node_the_jump_host_cannot_reach_is_blamed_on_the_node(testbed, jump_port, home):
    ssh_config(home, cluster_config(testbed, jump_port) + "Host tb-node9\n"
               f"    HostName {testbed.hosts['login'].rsplit('.', 1)[0]}.99\n"
               f"    ProxyJump tb-login\n    Port {jump_port}\n")

    async def main():
        async with SSHPool(Limits(connect_timeout=5)) as pool:
            await pool.host(Endpoint(host="tb-node9")).run("true")

    message = failure(main())
    assert message.startswith("tb-node9 via tb-login: unreachable from tb-login: "), message


def test_authentication_failure_at_the_jump_host_vs_at_the_node(testbed, jump_port, home,
                                                                tmp_path):
    stranger = make_key(tmp_path / "keys")
    config = cluster_config(testbed, jump_port, identity=False)
    ssh_config(home, f"Host tb-login\n    IdentityFile {stranger}\n"
               f"Host tb-node*\n    IdentityFile {testbed.key}\n" + config)

    async def main(host):
        async with SSHPool() as pool:
            await pool.host(Endpoint(host=host)).run("true")

    at_jump = failure(main("tb-node1"))
    assert at_jump.startswith("tb-login (jump host for tb-node1): authentication failed"), at_jump
    ssh_config(home, f"Host tb-login\n    IdentityFile {testbed.key}\n"
               f"Host tb-node*\n    IdentityFile {stranger}\n" + config)
    at_node = failure(main("tb-node1"))
    assert at_node.startswith("tb-node1 via tb-login: authentication failed"), at_node


# -- ssh-agent and encrypted keys -----------------------------------------------------------------


def test_key_held_only_by_ssh_agent(testbed, jump_port, home, tmp_path, monkeypatch):
    """No IdentityFile anywhere, no key in ~/.ssh: the agent authenticates every hop."""
    ssh_config(home, cluster_config(testbed, jump_port, identity=False))
    key = tmp_path / "keys" / "bed_key"
    key.parent.mkdir()
    shutil.copy(testbed.key, key)
    key.chmod(0o600)

    async def main():
        async with SSHPool() as pool:
            return await report(pool, "tb-node1")

    assert "authentication failed" in failure(main())  # no agent: no key at all
    with ssh_agent(tmp_path) as sock:
        ssh_add(sock, key)
        key.unlink()  # only the agent has it now
        monkeypatch.setenv("SSH_AUTH_SOCK", sock)
        (got,) = run(main())
    assert via_login(testbed, jump_port, "node1", got), got


def test_encrypted_key_loaded_into_ssh_agent_with_askpass(testbed, jump_port, home, tmp_path,
                                                           monkeypatch):
    key = make_key(tmp_path / "keys", passphrase="s3cret pass")
    ssh_config(home, cluster_config(testbed, jump_port, identity=False)
               .replace("Host *\n", f"Host *\n    IdentityFile {key}\n"))

    async def main():
        async with SSHPool() as pool:
            return await report(pool, "tb-node2")

    with authorized(testbed, key.with_suffix(".pub")), ssh_agent(tmp_path) as sock:
        ssh_add(sock, key, passphrase="s3cret pass")
        monkeypatch.setenv("SSH_AUTH_SOCK", sock)
        (got,) = run(main())
        assert via_login(testbed, jump_port, "node2", got), got
        # the agent alone: without it the same config fails, and says why
        monkeypatch.delenv("SSH_AUTH_SOCK")
        message = failure(main())
    assert message.startswith("tb-login (jump host for tb-node2): authentication failed: "
                              f"the key {key} is encrypted"), message
    assert "no ssh-agent is running" in message and f"ssh-add {key}" in message


def test_encrypted_key_without_agent_is_one_clear_error(testbed, jump_port, home, tmp_path,
                                                        monkeypatch):
    """Given as the profile's identity: refused before anything else, and said so."""
    key = make_key(tmp_path / "keys", passphrase="pw")
    endpoint = Endpoint(host="login", port=jump_port, user=testbed.user, identities=(str(key),),
                        known_hosts=str(testbed.known_hosts))

    async def main():
        async with SSHPool() as pool:
            await pool.host(endpoint).run("true")

    with authorized(testbed, key.with_suffix(".pub")):
        message = failure(main())
        assert message == (
            f"{endpoint}: authentication failed: the key {key} is encrypted (it has a "
            "passphrase) and no ssh-agent is running (SSH_AUTH_SOCK is not set); orchestra "
            f"never asks for passphrases: load it into ssh-agent (`eval $(ssh-agent)`, "
            f"`ssh-add {key}`) and keep SSH_AUTH_SOCK set")
        with ssh_agent(tmp_path) as sock:  # an agent that does not hold it
            monkeypatch.setenv("SSH_AUTH_SOCK", sock)
            assert "the ssh-agent does not hold it" in failure(main())
            ssh_add(sock, key, passphrase="pw")  # and once it does, the profile works
            run(main())


def test_profile_identity_and_known_hosts_apply_to_the_config_hops(testbed, jump_port, home):
    """The profile gives the key and known_hosts; the config only the chain: every hop gets
    them (asyncssh's own ProxyJump would connect the hop with default keys and known_hosts)."""
    ssh_config(home, cluster_config(testbed, jump_port, identity=False)
               .replace(f"    UserKnownHostsFile {testbed.known_hosts}\n", ""))

    async def main():
        async with SSHPool() as pool:
            return await report(pool, "tb-node3", identities=(str(testbed.key),),
                                known_hosts=str(testbed.known_hosts))

    (got,) = run(main())
    assert via_login(testbed, jump_port, "node3", got), got


def test_two_hop_proxyjump_and_a_failure_in_the_middle(testbed, jump_port, home):
    """`ProxyJump a,b`: this machine -> login:22 -> login:2200 -> node; a bad second hop is
    named, with the hop before it."""
    config = cluster_config(testbed, jump_port, jump="tb-front,tb-login")
    ssh_config(home, "Host tb-front\n    HostName login\n    Port 22\n" + config)

    async def main(host):
        async with SSHPool(Limits(connect_timeout=5)) as pool:
            got = await report(pool, host)
            return got, pool.stats()

    (got,), stats = run(main("tb-node1"))
    assert via_login(testbed, jump_port, "node1", got) and stats.connects == 3, (got, stats)
    ssh_config(home, "Host tb-front\n    HostName login\n    Port 22\n"
               + cluster_config(testbed, jump_port, jump="tb-front,login-typo"))
    with pytest.raises(SSHError) as error:
        run(main("tb-node1"))
    assert str(error.value).startswith(
        "login-typo via tb-front (jump host for tb-node1): unreachable from tb-front: "), error

