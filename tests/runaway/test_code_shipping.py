"""Code shipping you can trust: a results folder never swallows the user's files, what is left
out is said, large code is said with its biggest files, and the remote cache stays bounded
(local profile: the remote folder is a folder here, so a test can age its archives)."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

from liborchestra.transfer import CODE_CACHE_KEEP, LARGE_CODE, OUTPUT_MARKER
from tests.helpers import local_profile, write_script
from tests.runaway.test_batch import runaway

HOUR_AGO = time.time() - 3600


def test_exec_output_into_a_folder_of_user_files_keeps_them_shipped(tmp_path):
    code = tmp_path / "code"
    script = write_script(code, "train.sh", """\
        #!/usr/bin/env bash
        cat data/train.csv
        echo model > data/model.txt
        """)
    (code / "data").mkdir()
    (code / "data/train.csv").write_text("x,y\n1,2\n")
    profile = local_profile(tmp_path)
    first = runaway("exec", profile, script, "-o", "data", cwd=code)
    assert first.returncode == 0, first.stderr
    assert "-o data holds files of yours: it is not marked as results" in first.stderr
    assert not (code / "data" / OUTPUT_MARKER).exists()
    assert (code / "data/data/model.txt").read_text() == "model\n"  # results under -o
    second = runaway("exec", profile, script, cwd=code)  # data/ is still shipped
    assert second.returncode == 0, second.stderr
    assert second.stdout == "x,y\n1,2\n"


def test_batch_into_a_folder_of_user_files_is_refused(tmp_path):
    script = write_script(tmp_path / "code", "job.sh", "#!/usr/bin/env bash\ntrue\n")
    data = tmp_path / "code/data"
    data.mkdir()
    (data / "train.csv").write_text("1\n")
    done = runaway("batch", local_profile(tmp_path), script, "-o", data, "--", "{1;2}",
                   cwd=tmp_path)
    assert done.returncode == 2
    assert "holds files that are not a batch's (train.csv)" in done.stderr
    assert "Traceback" not in done.stderr
    assert sorted(p.name for p in data.iterdir()) == ["train.csv"]  # not marked, nothing added


def test_results_folders_left_out_of_the_code_are_said(tmp_path):
    code = tmp_path / "code"
    script = write_script(code, "job.sh", "#!/usr/bin/env bash\nls\n")
    profile = local_profile(tmp_path)
    made = runaway("batch", profile, script, "--name", "first", "--", "{1;2}", cwd=code)
    assert made.returncode == 0, made.stderr
    again = runaway("exec", profile, script, cwd=code)
    assert again.returncode == 0, again.stderr
    assert "left out of the code shipped" in again.stderr
    assert "batch/first/" in again.stderr
    assert "batch" in again.stdout.split() and "job.sh" in again.stdout.split()


def test_large_code_is_said_with_its_biggest_files_and_the_sendignore_hint(tmp_path):
    code = tmp_path / "code"
    script = write_script(code, "job.sh", "#!/usr/bin/env bash\ntrue\n")
    (code / "weights.bin").write_bytes(b"\0" * (LARGE_CODE + 1024))
    (code / "small.txt").write_text("s\n")
    profile = local_profile(tmp_path)
    done = runaway("exec", profile, script, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert "warning: shipping 52.4 MB of code (3 files)" in done.stderr, done.stderr
    assert "biggest: weights.bin 52.4 MB" in done.stderr and ".sendignore" in done.stderr
    (code / ".sendignore").write_text("weights.bin\n")
    quiet = runaway("exec", profile, script, cwd=tmp_path)
    assert quiet.returncode == 0, quiet.stderr
    assert "warning: shipping" not in quiet.stderr


def _archives(remote: Path) -> set[str]:
    return {p.name for p in (remote / "code").glob("*.tar")}


def test_remote_code_cache_keeps_the_most_recent_archives(tmp_path):
    code = tmp_path / "code"
    script = write_script(code, "job.sh", "#!/usr/bin/env bash\ncat version\n")
    profile = local_profile(tmp_path)
    remote = tmp_path / "remote"
    gate = tmp_path / "gate"
    gate.touch()
    slow = write_script(tmp_path / "other", "slow.sh",
                        f"#!/usr/bin/env bash\nwhile [ -e {gate} ]; do sleep 0.1; done\n")
    running = subprocess.Popen([sys.executable, "-m", "runaway", "exec", str(profile),
                                str(slow)], cwd=tmp_path, stderr=subprocess.PIPE, text=True)
    try:
        while not list((remote / "runs").glob("*/.orchestra/digest")):
            assert running.poll() is None, running.stderr.read()
            time.sleep(0.1)
        time.sleep(0.5)
        (in_use,) = _archives(remote)
        seen: list[str] = [in_use]  # the oldest of all: pruned first, were it not in use
        for version in range(CODE_CACHE_KEEP + 1):
            (code / "version").write_text(f"{version}\n")
            for order, name in enumerate(seen):  # used long ago, in the order they were made
                if (remote / "code" / name).exists():
                    os.utime(remote / "code" / name, (HOUR_AGO + order, HOUR_AGO + order))
            done = runaway("exec", profile, script, cwd=tmp_path)
            assert done.returncode == 0, done.stderr
            assert done.stdout == f"{version}\n"
            seen.append(next(iter(_archives(remote) - set(seen))))
            if version >= CODE_CACHE_KEEP:
                assert "code cache on local: removed 1 older archive(s)" in done.stderr
        # the most recent ones stay, and the one a run still uses; the oldest others went
        assert _archives(remote) == {in_use, *seen[-CODE_CACHE_KEEP:]}
    finally:
        gate.unlink()
        assert running.wait(timeout=60) == 0
    os.utime(remote / "code" / in_use, (HOUR_AGO, HOUR_AGO))
    listed = runaway("clean", profile, "--dry-run", cwd=tmp_path)
    assert listed.returncode == 0, listed.stderr
    assert f"would remove 0 run folder(s) and {CODE_CACHE_KEEP} code archive(s)" \
        in listed.stdout  # the newest one was used just now; the other run has ended
    assert f"code cache on local: {CODE_CACHE_KEEP + 1} archive(s)" in listed.stdout
    assert f"prunes it to the {CODE_CACHE_KEEP} most recently used" in listed.stdout


def test_code_that_cannot_be_read_fails_each_execution_once_with_the_file_named(tmp_path):
    """A file of the code that cannot be read (here a namespace file bind-mounted in, as a
    careless `--code /tmp` meets on the test bed) is the code's problem, not the cluster's:
    every execution fails saying which file, nothing is re-run as if lost, and the batch ends."""
    code = tmp_path / "code"
    script = write_script(code, "job.sh", "#!/usr/bin/env bash\necho hi\n")
    unreadable = code / "uts"
    unreadable.touch()
    subprocess.run(["mount", "--bind", "/proc/self/ns/uts", str(unreadable)], check=True)
    try:
        done = runaway("batch", local_profile(tmp_path), script, "--name", "bad", "--",
                       "{1;2;3}", cwd=tmp_path)
    finally:
        subprocess.run(["umount", str(unreadable)], check=True)
    assert done.returncode == 1, done.stderr
    status = runaway("status", "bad", cwd=tmp_path)
    lines = [line for line in status.stdout.splitlines() if "cannot read for shipping" in line]
    assert len(lines) == 3 and all(str(unreadable) in line for line in lines), status.stdout
    assert "failed 3" in status.stdout and "lost" not in status.stdout
