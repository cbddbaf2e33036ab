"""Shared pytest fixtures.

The ``testbed`` fixture describes the multi-node test cluster brought up by
``tests/testbed/up.sh`` (login + node1..3, each with its own sshd, Slurm, Grid Engine; see
tests/testbed/README.md). Tests that request it are marked ``integration`` automatically.
If the bed is not up, the fixture FAILS (it never skips): run ``tests/testbed/up.sh`` first.
"""

from __future__ import annotations

import dataclasses
import json
import os
import pathlib
import shlex
import signal
import subprocess
import time

import pytest

# One BLAS thread per process, set before anything loads numpy (here and, inherited, in the
# CLIs the tests start), as parasearch.bench does: the samplers' matrices are small, and
# threaded OpenBLAS only adds contention on a shared 2-core machine (GP asks ran ~8x slower
# in wall time and CPU). A value the caller set is kept.
for _var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

TESTBED_SCRIPTS = pathlib.Path(__file__).resolve().parent / "testbed"


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        "integration: needs the test bed of tests/testbed/up.sh (real sshd, Slurm, Grid Engine)",
    )


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        if "testbed" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.integration)


def _alive(pid: int) -> bool:
    """True if the process exists and is not a zombie (PID 1 reaps re-parented ones lazily)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            state = f.read().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state not in ("Z", "X")


@dataclasses.dataclass(frozen=True)
class Testbed:
    """The running test bed. Commands run as root from the root namespace, like the tests."""

    __test__ = False  # not a test class

    dir: pathlib.Path  # state dir ($TB)
    user: str  # the cluster user, e.g. "hpcuser"
    key: pathlib.Path  # the user's private key ($TB/ssh/id_ed25519)
    known_hosts: pathlib.Path  # strict known_hosts: "name,ip" of every host + [127.0.0.1]:port
    hosts: dict[str, str]  # "login", "node1".. -> IP address
    local_port: int  # stock-limits sshd on 127.0.0.1 in the root namespace (0 = none)
    cpus: int = 4  # CPUs (Slurm) / slots (SGE) per node
    sge: bool = True
    accounting: bool = True  # slurmdbd: sacct works
    pbs: bool = True
    # PBS-style qsub/qstat/qdel/pbsnodes (over Slurm), not on any PATH
    pbs_bin: pathlib.Path = pathlib.Path("/opt/pbs-compat/bin")
    postgres: str = ""  # URL of the bed's PostgreSQL (user orchestra, database searches)

    @property
    def nodes(self) -> list[str]:
        """The compute nodes (every host but login)."""
        return [h for h in self.hosts if h != "login"]

    # --- hosts -------------------------------------------------------------------------------
    def init_pid(self, host: str) -> int | None:
        """PID (root namespace) of the host's init, or None if the host is down."""
        self._known(host)
        try:
            pid = int((self.dir / "run" / f"init-{host}.pid").read_text())
            uts = (self.dir / "run" / f"uts-{host}.id").read_text().strip()
        except (OSError, ValueError):
            return None
        try:
            same_host = os.readlink(f"/proc/{pid}/ns/uts") == uts  # guards against PID reuse
        except OSError:
            return None
        return pid if same_host and _alive(pid) else None

    def is_up(self, host: str) -> bool:
        return self.init_pid(host) is not None

    def on(
        self,
        host: str,
        *argv: str,
        check: bool = True,
        timeout: float = 120,
        input: str | None = None,
    ) -> subprocess.CompletedProcess[str]:
        """Run argv as root inside the host (its PID, mount, network and UTS namespaces)."""
        pid = self.init_pid(host)
        if pid is None:
            raise RuntimeError(f"host {host} is down (revive() or tests/testbed/up.sh restarts it)")
        return subprocess.run(
            ["nsenter", "-t", str(pid), "--pid", "--mount", "--net", "--uts", "--", *argv],
            capture_output=True,
            text=True,
            check=check,
            timeout=timeout,
            input=input,
        )

    def ssh_argv(self, host: str, *, port: int | None = None) -> list[str]:
        """OpenSSH client argv (no command) as the user, with the key and strict known_hosts.

        host is a bed host name ("login", "node1"..), an address, or "local" for the stock
        sshd on 127.0.0.1:local_port.
        """
        if host == "local":
            host, port = "127.0.0.1", port or self.local_port
        return [
            "ssh", "-p", str(port or 22), "-i", str(self.key),
            "-o", f"UserKnownHostsFile={self.known_hosts}", "-o", "StrictHostKeyChecking=yes",
            "-o", "BatchMode=yes", "-o", "ConnectTimeout=10", "-o", "LogLevel=ERROR",
            f"{self.user}@{host}",
        ]  # fmt: skip

    def ssh(
        self,
        host: str,
        command: str,
        *,
        port: int | None = None,
        check: bool = False,
        timeout: float = 120,
    ) -> subprocess.CompletedProcess[str]:
        """Run a shell command line on host over SSH as the user (see ssh_argv for host)."""
        return subprocess.run(
            [*self.ssh_argv(host, port=port), command],
            capture_output=True,
            text=True,
            check=check,
            timeout=timeout,
            stdin=subprocess.DEVNULL,
        )

    def procs(self, host: str, user: str | None = None) -> list[str]:
        """Command lines of the user's processes on host (default user: self.user).

        Sessions of sshd ("sshd: hpcuser@notty") are included.
        """
        r = self.on(host, "ps", "-u", user or self.user, "-o", "args=", check=False)
        if r.returncode not in (0, 1):  # ps exits 1 when nothing matches
            raise RuntimeError(f"ps on {host} failed: {r.stderr.strip()}")
        return [line.strip() for line in r.stdout.splitlines() if line.strip()]

    # --- faults --------------------------------------------------------------------------------
    def kill_host(self, host: str, timeout: float = 10) -> None:
        """SIGKILL the host's init: the whole host dies at once (sshd, slurmd/slurmctld, sge_*,
        jobs, user processes). Its address stays configured, so connections are refused, not
        timed out (see unplug). Bring it back with revive()."""
        pid = self.init_pid(host)
        if pid is None:
            return
        pidns = os.readlink(f"/proc/{pid}/ns/pid")
        os.kill(pid, signal.SIGKILL)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not any(self._in_pidns(p, pidns) for p in self._all_pids()):
                return
            time.sleep(0.02)
        raise RuntimeError(f"processes of {host} still alive {timeout}s after SIGKILL of its init")

    def unplug(self, host: str) -> None:
        """Take the host's link down: packets to and from it are dropped (connections time out)."""
        self._known(host)
        subprocess.run(["ip", "link", "set", f"tbv-{host}", "down"], check=True)

    def plug(self, host: str) -> None:
        """Undo unplug()."""
        self._known(host)
        subprocess.run(["ip", "link", "set", f"tbv-{host}", "up"], check=True)

    def missing(self) -> list[str]:
        """What of the bed is not running, e.g. ["node3"] (the whole host) or ["sge_execd@node1"]:
        [] when every host is up and every daemon listens on its port. revive() repairs it."""
        want = {"login": {22: "sshd", 6817: "slurmctld"}}
        if self.accounting:
            want["login"][6819] = "slurmdbd"
        if self.sge:
            want["login"][6444] = "sge_qmaster"
        for node in self.nodes:
            want[node] = {22: "sshd", 6818: "slurmd", **({6445: "sge_execd"} if self.sge else {})}
        out = []
        for host, daemons in want.items():
            if not self.is_up(host):
                out.append(host)
                continue
            ss = self.on(host, "ss", "-Hltn", check=False).stdout.split("\n")
            ports = {int(line.split()[3].rsplit(":", 1)[1]) for line in ss if line.strip()}
            out += [f"{name}@{host}" for port, name in daemons.items() if port not in ports]
        return out

    def revive(self, timeout: float = 180) -> subprocess.CompletedProcess[str]:
        """Re-run up.sh (repair mode, same settings): restarts every dead host and daemon
        (sshd, Slurm, sge_qmaster, sge_execd) and re-plugs every link, then waits until the
        cluster is usable again: nodes idle in Slurm, every sge_execd registered and all.q
        healthy with a load in qhost (~3 s per dead node; 15-35 s if sge_qmaster died: the
        execds that kept running re-register on their own schedule)."""
        env = dict(os.environ, TB=str(self.dir))
        env.update(_read_settings(self.dir))
        r = subprocess.run(
            [str(TESTBED_SCRIPTS / "up.sh")],
            capture_output=True,
            text=True,
            timeout=timeout,
            env=env,
            stdin=subprocess.DEVNULL,
        )
        if r.returncode != 0:
            output = r.stdout[-3000:] + r.stderr[-3000:]
            raise RuntimeError(f"up.sh failed (exit {r.returncode}):\n{output}")
        return r

    def reset(self) -> None:
        """Cancel every Slurm/SGE job of the user and kill the user's processes on every host
        (and in the root namespace): back to an idle cluster. A bed with a dead host or daemon
        is revived first: `qdel -f` of a job whose sge_execd is dead crashes sge_qmaster."""
        if self.missing():
            self.revive()
        self.on("login", "scancel", "-u", self.user, check=False)
        if self.sge:
            self.on("login", "qdel", "-f", "-u", self.user, check=False)
        for host in self.hosts:
            if self.is_up(host):
                self.on(host, "pkill", "-KILL", "-u", self.user, check=False)
        r = subprocess.run(["ps", "-u", self.user, "-o", "pid="], capture_output=True, text=True)
        for pid in r.stdout.split():
            try:
                os.kill(int(pid), signal.SIGKILL)
            except ProcessLookupError:
                pass

    def sge_report(self) -> str:
        """`qstat -f` (all users' jobs) and `qhost` on login, for the message of a failed test."""
        out = []
        for argv in (["qstat", "-f", "-u", "*"], ["qhost"]):
            r = self.on("login", *argv, check=False, timeout=30)
            out.append(f"$ {' '.join(argv)}\n{r.stdout}{r.stderr}")
        return "\n".join(out)

    # --- helpers -------------------------------------------------------------------------------
    def _known(self, host: str) -> None:
        if host not in self.hosts:
            raise ValueError(f"unknown test bed host {host!r} (known: {', '.join(self.hosts)})")

    @staticmethod
    def _all_pids() -> list[int]:
        return [int(p) for p in os.listdir("/proc") if p.isdigit()]

    @staticmethod
    def _in_pidns(pid: int, pidns: str) -> bool:
        try:
            return os.readlink(f"/proc/{pid}/ns/pid") == pidns and _alive(pid)
        except OSError:
            return False


def _read_settings(tb: pathlib.Path) -> dict[str, str]:
    """The TB_* settings up.sh was run with ($TB/run/settings.env, shell-quoted values)."""
    out = {}
    try:
        text = (tb / "run" / "settings.env").read_text()
    except OSError:
        return out
    for line in text.splitlines():
        name, sep, value = line.partition("=")
        if sep:
            words = shlex.split(value)
            out[name] = words[0] if words else ""
    return out


def load_testbed(tb: str | os.PathLike[str] | None = None, *, repair: bool = False) -> Testbed:
    """Describe the running bed; raise RuntimeError (one line, what to do) if it is not up.

    With repair=True, a bed left with a dead host or daemon (e.g. by an interrupted fault test)
    is revived instead of refused."""
    tb = pathlib.Path(tb or os.environ.get("TB", "/tmp/testbed/cluster"))
    hint = "run tests/testbed/up.sh (as root)"
    try:
        info = json.loads((tb / "testbed.json").read_text())
    except (OSError, ValueError):
        raise RuntimeError(f"the test bed is not up (no {tb}/testbed.json): {hint}") from None
    if not (tb / "run" / "up.ok").exists():
        raise RuntimeError(f"the test bed in {tb} is not (completely) up: {hint}")
    bed = Testbed(
        dir=tb,
        user=info["user"],
        key=pathlib.Path(info["key"]),
        known_hosts=pathlib.Path(info["known_hosts"]),
        hosts=dict(info["hosts"]),
        local_port=int(info["local_port"]),
        cpus=int(info["cpus"]),
        sge=bool(info["sge"]),
        accounting=bool(info["accounting"]),
        pbs=bool(info["pbs"]),
        pbs_bin=pathlib.Path(info["pbs_bin"]),
        postgres=info.get("postgres", ""),
    )
    if repair and bed.missing():
        bed.revive()
    down = [h for h in bed.hosts if not bed.is_up(h)]
    if down:
        raise RuntimeError(f"test bed host(s) {', '.join(down)} down: {hint}")
    return bed


@pytest.fixture(scope="session")
def testbed() -> Testbed:
    """The running test bed (tests/testbed/up.sh), repaired if a host or daemon died since.
    Fails, never skips, if it is not up."""
    try:
        return load_testbed(repair=True)
    except RuntimeError as e:
        problem = str(e)
    pytest.fail(problem, pytrace=False)
