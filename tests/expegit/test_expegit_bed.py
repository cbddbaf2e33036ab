"""expegit on the test bed: a run on Slurm; three clones syncing through a bare repository on
`login` over SSH, with racing pushes; a large result sent by git-annex over SSH and fetched in
another clone with `expegit get`."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import uuid
from pathlib import Path

import pytest
from conftest import IDENTITY, assert_clean, expegit, git, records

from tests.helpers import slurm_profile


def _ssh_env(testbed) -> dict[str, str]:
    return {"GIT_SSH_COMMAND": (f"ssh -i {testbed.key} -o UserKnownHostsFile="
                                f"{testbed.known_hosts} -o StrictHostKeyChecking=yes "
                                "-o BatchMode=yes")}


def _annex_ssh(testbed, clone: Path) -> None:
    """What a user's ~/.ssh/config would say, for git-annex (which ignores GIT_SSH_COMMAND)."""
    git(clone, "config", "remote.origin.annex-ssh-options",
        f"-i {testbed.key} -o UserKnownHostsFile={testbed.known_hosts} "
        "-o StrictHostKeyChecking=yes -o BatchMode=yes")


@pytest.fixture
def bare(testbed):
    """A bare repository in hpcuser's home, reached over SSH on login."""
    name = f"expegit-test-{uuid.uuid4().hex[:8]}.git"
    path = Path("/home") / testbed.user / name
    subprocess.run(["git", "init", "-q", "--bare", "-b", "main", str(path)], check=True)
    subprocess.run(["chown", "-R", f"{testbed.user}:{testbed.user}", str(path)], check=True)
    yield f"ssh://{testbed.user}@login{path}"
    subprocess.run(["rm", "-rf", str(path)], check=True)


def test_run_on_slurm(testbed, tmp_path: Path, campaign: Path):
    profile = slurm_profile(testbed, tmp_path)
    head = git(campaign / "code", "rev-parse", "HEAD").strip()
    expegit("run", str(profile), "train.sh", "--param", "lr=0.1,0.2", "-x", "3",
            cwd=campaign, timeout=600)
    recs = records(campaign)
    assert len(recs) == 6
    for rec in recs.values():
        assert rec["commit"] == head and rec["state"] == "completed"
        assert rec["node"] in testbed.nodes
        assert int(rec["slot"]) in range(testbed.cpus)
        assert rec["allocation"]  # the Slurm job it ran in
        out = (campaign / "runs" / rec["id"] / "stdout").read_text()
        assert f"on {rec['node']} slot {rec['slot']}" in out
    assert_clean(campaign)


def _sync_all(clones: list[Path], env: dict) -> list[str]:
    """`expegit sync` in every clone at once (their pushes race)."""
    procs = [subprocess.Popen([sys.executable, "-m", "expegit", "sync"], cwd=c,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                              env={**os.environ, **IDENTITY, **env}) for c in clones]
    notes = []
    for proc in procs:
        _, err = proc.communicate(timeout=300)
        assert proc.returncode == 0, err
        notes.append(err)
    return notes


def test_three_clones_sync_over_ssh(testbed, tmp_path: Path, campaign: Path, local: str,
                                    bare: str):
    env = _ssh_env(testbed)
    git(campaign, "remote", "add", "origin", bare)
    expegit("sync", cwd=campaign, env=env)
    clones = [campaign]
    for name in ("b", "c"):
        expegit("clone", bare, str(tmp_path / name), cwd=tmp_path, env=env)
        clones.append(tmp_path / name)
    for clone in clones:
        _annex_ssh(testbed, clone)
    made: set[str] = set()
    notes: list[str] = []
    for round_ in range(2):  # the second round merges into clones that already synced
        for i, clone in enumerate(clones):
            expegit("run", local, "train.sh", "--name", f"r{round_}", "--param",
                    f"lr={i + 1}.{round_}", "-x", "2", cwd=clone)
        made |= {rid for c in clones for rid in records(c)}
        notes += _sync_all(clones, env)
    notes += _sync_all(clones, env)  # the last to push in the final round brings the rest
    assert len(made) == 12
    for clone in clones:
        assert set(records(clone)) == made
        assert_clean(clone)
    check = tmp_path / "check"
    git(tmp_path, "clone", "-q", bare, str(check), env=env)
    on_remote = records(check)
    assert set(on_remote) == made
    for rec in on_remote.values():  # every record intact, with its outputs
        folder = check / "runs" / rec["id"]
        assert json.loads((folder / "results.json").read_text())["loss"] == \
            pytest.approx(2 * rec["parameters"]["lr"])
    merges = git(check, "log", "--merges", "--format=%s")
    assert "conflict" not in merges.lower()
    print("push retries seen:", sum("push attempts" in n for n in notes))


def test_large_result_through_annex_over_ssh(testbed, tmp_path: Path, campaign: Path,
                                              local: str, bare: str):
    env = _ssh_env(testbed)
    git(campaign, "remote", "add", "origin", bare)
    _annex_ssh(testbed, campaign)
    expegit("run", local, "big.sh", "--", "3000000", cwd=campaign)
    (rec,) = records(campaign).values()
    assert rec["large"] == ["weights.bin"]
    folder = campaign / "runs" / rec["id"]
    digest = (folder / "weights.sha256").read_text().strip()
    assert (folder / "weights.bin").is_symlink()  # git holds a pointer
    blob = git(campaign, "cat-file", "-s", f"HEAD:runs/{rec['id']}/weights.bin").strip()
    assert int(blob) < 1000
    assert hashlib.sha256((folder / "weights.bin").read_bytes()).hexdigest() == digest
    expegit("sync", cwd=campaign, env=env)
    other = tmp_path / "other"
    expegit("clone", bare, str(other), cwd=tmp_path, env=env)
    _annex_ssh(testbed, other)
    there = other / "runs" / rec["id"] / "weights.bin"
    assert there.is_symlink() and not there.exists()  # not fetched yet
    assert "not here" in expegit("show", rec["id"][:8], cwd=other).stdout
    expegit("get", rec["id"][:8], cwd=other, env=env)
    assert hashlib.sha256(there.read_bytes()).hexdigest() == digest
    assert_clean(other)
