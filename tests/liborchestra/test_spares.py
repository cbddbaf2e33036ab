"""Spare run folders: the node agent keeps finished run folders to hold later runs instead of
removing them (node_agent.Spares). A later run must find the code exactly as shipped and
nothing of an earlier run; a folder whose run left a process behind is never reused."""

from __future__ import annotations

import os
import subprocess
import sys
from collections import Counter
from pathlib import Path

from liborchestra.node_spares import Spares
from tests.helpers import local_profile, write_script


def _batch(tmp: Path, script: Path, name: str, n: int, slots: int = 1) -> list[Path]:
    profile = local_profile(tmp, slots=slots)
    done = subprocess.run([sys.executable, "-m", "runaway", "batch", str(profile), str(script),
                           "--name", name, "--", "{" + ";".join(map(str, range(n))) + "}"],
                          cwd=tmp, capture_output=True, text=True, timeout=180)
    assert done.returncode == 0, done.stderr[-2000:]
    folders = [f for f in (tmp / "batch" / name).iterdir() if f.is_dir()]
    assert len(folders) == n
    return folders


def test_a_reused_run_folder_holds_the_code_as_shipped_and_nothing_of_the_run_before(tmp_path):
    code = tmp_path / "code"
    (code / "data").mkdir(parents=True)
    (code / "data" / "table.txt").write_text("pristine\n")
    (code / "same.txt").write_text("AAAA\n")  # rewritten by each run, same size
    script = write_script(code, "job.sh", """\
        #!/usr/bin/env bash
        ls -A | sort | tr '\\n' ' '; echo
        stat -c %i . .orchestra/stdout > inodes
        cat data/table.txt same.txt
        echo BBBB > same.txt
        mkdir -p res; echo "$1" > res/value; echo "$1" > .hidden
        echo changed >> data/table.txt; chmod a-w data/table.txt; chmod 500 data
        sleep 0.3
        """)
    folders = _batch(tmp_path, script, "reuse", 9)
    inodes = set()
    for folder in folders:
        lines = (folder / "stdout").read_text().splitlines()
        assert lines == [".orchestra data job.sh same.txt ", "pristine", "AAAA"], \
            (folder, lines)  # the code as shipped, only
        arg = (folder / "res" / "value").read_text()
        assert (folder / ".hidden").read_text() == arg
        assert (folder / "data" / "table.txt").read_text() == "pristine\nchanged\n"
        assert (folder / "same.txt").read_text() == "BBBB\n"
        inodes.add((folder / "inodes").read_text())
    # runs after the first removals (once a second) took the folders of earlier ones
    assert len(inodes) < len(folders), inodes
    assert not (tmp_path / "remote" / "spare").exists() or \
        list((tmp_path / "remote" / "spare").iterdir()) == []  # the agent removed its spares


def test_a_folder_whose_run_left_a_process_behind_is_not_reused(tmp_path):
    script = write_script(tmp_path / "code", "job.sh", """\
        #!/usr/bin/env bash
        if [ "$1" = 0 ]; then
          (for i in $(seq 40); do echo late >> straggler.txt; sleep 0.1; done) &
        fi
        sleep 0.3
        [ -e straggler.txt ] && [ "$1" != 0 ] && echo "polluted by a straggler"
        true
        """)
    folders = _batch(tmp_path, script, "straggler", 12)
    polluted = [f.name for f in folders if "polluted" in (f / "stdout").read_text()]
    assert polluted == []


def _spare_with(tmp: Path, content: str) -> tuple[Spares, str, dict]:
    """A spare folder holding `code.txt` as the agent writes code (time 0, mode 0644)."""
    run = tmp / "root" / "runs" / "a"
    (run / ".orchestra").mkdir(parents=True)
    code = run / "code.txt"
    code.write_text(content)
    code.chmod(0o644)
    os.utime(code, (0, 0))
    spares = Spares(".orchestra")
    assert spares.keep(str(run), (len(content), "archive-a"))
    return spares, str(tmp / "root" / "runs" / "b"), {"code.txt": ("f", 0o644, len(content), 0)}


def test_a_spare_keeps_code_files_only_for_the_archive_it_held(tmp_path):
    spares, run, files = _spare_with(tmp_path, "lr = 0.1\n")
    assert spares.take(run, "archive-b", files) == frozenset()  # rewritten: another archive
    spares.keep(run, (9, "archive-b"))
    assert spares.take(str(tmp_path / "root/runs/c"), "archive-b", files) == {"code.txt"}
    spares.close()


def test_a_spare_never_writes_through_a_hard_link_a_run_made(tmp_path):
    spares, run, files = _spare_with(tmp_path, "mine\n")
    [spare] = [path for path, *_ in spares.free]
    users = tmp_path / "users_file.txt"
    os.link(Path(spare) / "code.txt", users)  # the run linked a code file to one of the user's
    assert spares.take(run, "archive-a", files) == frozenset()  # unlinked, not kept in place
    assert users.read_text() == "mine\n" and not Path(run, "code.txt").exists()
    spares.close()


def test_a_reused_folder_has_no_exit_code_and_writes_its_records_over_the_old_ones(tmp_path):
    """A run in a reused folder finds no pid and no exit code of the run before (readers take
    one as the run's end), while their files are kept aside and written over, not freed and
    made again: the exit code of each run is the same file."""
    script = write_script(tmp_path / "code", "job.sh", """\
        #!/usr/bin/env bash
        test -e .orchestra/ecode && echo "stale exit code"
        echo "$(stat -c %i .orchestra/ecode.next 2>/dev/null || echo none)" \\
            "$(stat -c %i .orchestra/node .orchestra/digest | tr '\\n' ' ')" > inodes
        sleep 0.2
        """)
    folders = _batch(tmp_path, script, "records", 14)
    seen = [(f / "inodes").read_text().split() for f in folders]
    assert all((f / "stdout").read_text() == "" for f in folders)
    assert all((f / "ecode").read_text() == "0\n" for f in folders)
    reused = [s for s in seen if s[0] != "none"]  # [ecode.next, node, digest] inodes
    assert len(reused) >= 3, seen  # most took a spare (removals run about once a second)
    made = Counter((node, digest) for _, node, digest in seen)
    assert all(made[node, digest] >= 2 for _, node, digest in reused), seen  # a run's before
    assert len({(node, ecode) for ecode, node, _ in reused}) == \
        len({node for _, node, _ in reused}), seen  # each folder's one exit-code file


def test_the_files_found_intact_when_the_run_ended_count_only_for_the_same_archive(tmp_path):
    run = tmp_path / "root" / "runs" / "a"
    (run / ".orchestra").mkdir(parents=True)
    (run / "code.txt").write_text("x")
    spares = Spares(".orchestra")
    assert spares.keep(str(run), (1, "archive-a"), frozenset({"code.txt"}))
    # its mode is not as archived: looked at again, it would be rewritten
    files = {"code.txt": ("f", 0o600, 1, 0)}
    assert spares.take(str(tmp_path / "root/runs/b"), "archive-a", files) == {"code.txt"}
    spares.keep(str(tmp_path / "root/runs/b"), (1, "archive-b"), frozenset({"code.txt"}))
    # another archive, without that file: what the scan knew does not keep it
    assert spares.take(str(tmp_path / "root/runs/c"), "archive-c", {}) == frozenset()
    assert os.listdir(tmp_path / "root/runs/c") == [".orchestra"]
    spares.close()
