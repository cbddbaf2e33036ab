"""The test bed itself: what the other integration tests rely on (tests/testbed/up.sh first)."""

from __future__ import annotations

import shlex
import subprocess
import time
import uuid

import pytest

pytestmark = pytest.mark.integration


def wait_until(predicate, timeout: float = 20.0, interval: float = 0.1):
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value or time.monotonic() > deadline:
            return value
        time.sleep(interval)


def test_every_host_answers_ssh_with_its_own_hostname(testbed):
    assert set(testbed.hosts) == {"login", "node1", "node2", "node3"}
    for host, ip in testbed.hosts.items():
        r = testbed.ssh(host, "hostname; echo $USER")
        assert r.returncode == 0, r.stderr
        assert r.stdout.split() == [host, testbed.user]
        # by address too: the strict known_hosts lists "name,ip"
        r = testbed.ssh(ip, "hostname")
        assert (r.returncode, r.stdout.strip()) == (0, host), r.stderr


def test_unknown_host_key_is_refused(testbed, tmp_path):
    empty = tmp_path / "known_hosts"
    empty.write_text("")
    argv = testbed.ssh_argv("node1")
    argv = [a.replace(str(testbed.known_hosts), str(empty)) for a in argv]
    r = subprocess.run([*argv, "true"], capture_output=True, text=True, timeout=30)
    assert r.returncode == 255
    assert "Host key verification failed" in r.stderr


def test_login_reaches_nodes_like_a_real_cluster(testbed):
    r = testbed.ssh(
        "login", "for n in node1 node2 node3; do ssh -o BatchMode=yes $n hostname; done"
    )
    assert r.returncode == 0, r.stderr
    assert r.stdout.split() == ["node1", "node2", "node3"]


def test_on_runs_inside_the_host(testbed):
    assert testbed.on("node2", "hostname").stdout.strip() == "node2"
    addr = testbed.on("node2", "ip", "-4", "-o", "addr", "show", "eth0").stdout
    assert testbed.hosts["node2"] + "/24" in addr
    # its own PID namespace: PID 1 is the host's init, not the machine's
    assert "sleep 3600" in testbed.on("node2", "cat", "/proc/1/cmdline").stdout.replace("\0", " ")


def test_procs_sees_only_that_hosts_processes(testbed):
    marker = "sleep 4242"
    r = testbed.ssh("node1", f"nohup {marker} >/dev/null 2>&1 & echo started")
    assert r.returncode == 0, r.stderr
    try:
        assert wait_until(lambda: marker in testbed.procs("node1"), timeout=5)
        assert marker not in testbed.procs("node2")
        assert marker not in testbed.procs("login")
    finally:
        testbed.on("node1", "pkill", "-u", testbed.user, "-f", marker, check=False)
    assert wait_until(lambda: marker not in testbed.procs("node1"), timeout=5)


def test_stock_sshd_has_stock_limits(testbed):
    cfg = testbed.dir / "etc" / "sshd_config-local"
    out = subprocess.run(
        ["/usr/sbin/sshd", "-T", "-f", str(cfg)], capture_output=True, text=True, check=True
    ).stdout
    effective = dict(line.split(" ", 1) for line in out.splitlines() if " " in line)
    assert effective["maxsessions"] == "10"
    assert effective["maxstartups"] == "10:30:100"
    assert effective["port"] == str(testbed.local_port)
    r = testbed.ssh("local", "echo $USER")
    assert (r.returncode, r.stdout.strip()) == (0, testbed.user), r.stderr


def test_node_sshd_has_raised_limits(testbed):
    out = subprocess.run(
        ["/usr/sbin/sshd", "-T", "-f", str(testbed.dir / "etc" / "sshd_config-node1")],
        capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    assert "maxsessions 64" in out.splitlines()
    assert "maxstartups 100:30:200" in out.splitlines()


def test_slurm_srun_spans_the_three_nodes(testbed):
    r = testbed.ssh("login", "srun -N3 hostname | sort")
    assert r.returncode == 0, r.stderr
    assert r.stdout.split() == ["node1", "node2", "node3"]


def test_slurm_rejects_impossible_requests_at_once(testbed):
    r = testbed.ssh("login", "sbatch -N5 --wrap true")
    assert r.returncode != 0
    assert "Node count specification invalid" in r.stderr


def test_sacct_records_a_failed_job(testbed):
    assert testbed.accounting
    r = testbed.ssh("login", "sbatch --parsable -o /dev/null --wrap 'exit 3'", check=True)
    job = r.stdout.strip()

    def state():
        out = testbed.ssh("login", f"sacct -n -X -P -j {job} -o State,ExitCode").stdout.strip()
        return out if out == "FAILED|3:0" else None

    assert wait_until(state, timeout=20) == "FAILED|3:0"


def qsub_sync(testbed, options: str, script: str, timeout: int = 60):
    """Submit script (on stdin) as job "tbtest" with `qsub -sync y` on login, waiting at most
    timeout seconds; then delete it (plain qdel: `qdel -f` can crash sge_qmaster) and fail."""
    qsub = f"timeout {timeout} qsub -sync y -N tbtest {options} >/dev/null"
    r = testbed.ssh("login", f"echo {shlex.quote(script)} | {qsub}", timeout=timeout + 30)
    if r.returncode != 0:
        report = testbed.sge_report()
        testbed.ssh("login", "qdel tbtest", timeout=30)
        pytest.fail(
            f"qsub -sync y {options} exited {r.returncode} (124: no result in {timeout} s): "
            f"{r.stderr.strip()}\n{report}"
        )


def test_qsub_runs_as_the_user_on_a_node(testbed):
    assert testbed.sge
    out = f".qsub-{uuid.uuid4().hex[:8]}"  # in the (shared) home
    try:
        # the job script on stdin (with -b y, SGE re-splits the arguments on spaces)
        qsub_sync(testbed, f"-j y -o {out}", "echo $(hostname) $USER")
        host, user = testbed.ssh("login", f"cat {out}", check=True).stdout.split()
    finally:
        testbed.ssh("login", f"rm -f {out}")
    assert host in testbed.nodes
    assert user == testbed.user
    assert wait_until(lambda: "tbtest" not in testbed.ssh("login", "qstat").stdout, timeout=15)


def test_pbs_wrappers_submit_to_slurm(testbed):
    assert testbed.pbs
    qsub, qstat = testbed.pbs_bin / "qsub", testbed.pbs_bin / "qstat"
    r = testbed.ssh(
        "login",
        "set -e; d=$(mktemp -d ~/.pbs-XXXXXX); cd $d; "
        "printf '#!/bin/bash\\n#PBS -N pbstb\\n#PBS -l nodes=1:ppn=1,walltime=00:01:00\\n"
        "hostname\\n' >job.sh; "
        f"j=$({qsub} job.sh); {qstat} -f $j | grep Job_Name; "
        f"for i in $(seq 100); do {qstat} -f $j | grep -q 'job_state = C' && break; "
        "sleep 0.1; done; "
        f"{qstat} -f $j | grep job_state; cat job.sh.o$j; cd; rm -rf $d",
    )
    assert r.returncode == 0, r.stderr
    lines = [line.strip() for line in r.stdout.splitlines()]
    assert lines[:2] == ["Job_Name = pbstb", "job_state = C"]
    assert lines[2] in testbed.nodes


def test_kill_host_and_revive(testbed):
    try:
        testbed.kill_host("node3")
        assert not testbed.is_up("node3")
        assert testbed.missing() == ["node3"]
        r = testbed.ssh("node3", "true", timeout=30)
        assert r.returncode == 255  # connection refused: nothing listens any more
        with pytest.raises(RuntimeError, match="down"):
            testbed.on("node3", "true")
        testbed.revive()
        assert testbed.missing() == []
        assert testbed.ssh("node3", "hostname").stdout.strip() == "node3"
        r = testbed.ssh("login", "sinfo -h -N -n node3 -p debug -o '%t'")
        assert r.stdout.strip() in ("idle", "mix", "alloc")  # no "*": it responds
        # Grid Engine uses the new sge_execd
        qsub_sync(testbed, "-q all.q@node3 -j y -o /dev/null", "true")
        # each daemon has a session of its own, not pytest's (which could take it along when
        # it ends): seen from inside the host's PID namespace, an outside session is 0
        ps = testbed.on("node3", "ps", "-e", "-o", "sid=,comm=").stdout.splitlines()
        daemons = {"sshd", "slurmd", "sge_execd"}
        assert [c for sid, c in map(str.split, ps) if c in daemons and sid == "0"] == []
    finally:
        if testbed.missing():  # never leave a dead host or daemon to the tests that follow
            testbed.revive()


def test_nothing_left_running(testbed):
    assert testbed.missing() == []

    def squeue():
        return testbed.ssh("login", "squeue -h -o '%i %j %T %M'").stdout.strip()

    assert wait_until(lambda: squeue() == "", timeout=15), f"jobs left in squeue:\n{squeue()}"
    for node in testbed.nodes:
        orphans = [p for p in testbed.procs(node) if not p.startswith("sshd:")]
        assert orphans == [], f"processes of {testbed.user} left on {node}: {orphans}"
