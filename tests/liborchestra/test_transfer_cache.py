"""transfer: results folders are marked only when that loses nothing, archives say what they
left out and their biggest files, and the cache pruning command (run by real bash on a real
folder) keeps the most recent archives and those in use."""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path

from liborchestra.transfer import (
    OUTPUT_MARKER,
    build_archive,
    mark_output,
    parse_removed,
    prune_command,
)


def test_mark_output_never_marks_a_folder_of_user_files(tmp_path):
    assert mark_output(tmp_path / "new/results")
    assert (tmp_path / "new/results" / OUTPUT_MARKER).is_file()
    empty = tmp_path / "empty"
    empty.mkdir()
    assert mark_output(empty)
    data = tmp_path / "data"
    data.mkdir()
    (data / "train.csv").write_text("1\n")
    assert not mark_output(data)
    assert not (data / OUTPUT_MARKER).exists()
    assert mark_output(tmp_path / "new/results")  # marked already: stays marked


def test_archive_says_what_it_left_out_and_its_biggest_files(tmp_path):
    root = tmp_path / "code"
    (root / "runs/a").mkdir(parents=True)
    (root / "runs/a" / OUTPUT_MARKER).touch()
    (root / "runs/a/out.txt").write_text("x")
    (root / "cache").mkdir()
    (root / ".sendignore").write_text("cache/\n")
    (root / "big.bin").write_bytes(b"1" * 5000)
    (root / "mid.bin").write_bytes(b"1" * 300)
    (root / "run.sh").write_text("echo\n")
    archive = build_archive(root)
    assert archive.left_out == ("runs/a",)  # ignored ones are the user's choice: not listed
    assert archive.biggest[:2] == (("big.bin", 5000), ("mid.bin", 300))


def _prune(root: Path, keep: int, grace: float, protect: tuple[str, ...] = ()) -> tuple:
    done = subprocess.run(["bash", "-c", prune_command(str(root), keep, grace, protect)],
                          capture_output=True, text=True, check=True)
    return parse_removed(done.stdout)


def test_prune_keeps_recent_in_use_and_protected_archives(tmp_path):
    code = tmp_path / "code"
    code.mkdir()
    now = time.time()
    for i in range(6):  # a0 is the oldest
        path = code / f"{'a' * 63}{i}.tar"
        path.write_bytes(b"x" * (i + 1))
        os.utime(path, (now - 7200 + i, now - 7200 + i))
    partial = code / f".{'b' * 64}.tar.123"
    partial.write_bytes(b"p")
    os.utime(partial, (now - 7200, now - 7200))
    running = tmp_path / "runs/r1/.orchestra"
    running.mkdir(parents=True)
    (running / "digest").write_text(f"{'a' * 63}1\n")  # a run without ecode still uses a1
    done = tmp_path / "runs/r2/.orchestra"
    done.mkdir(parents=True)
    (done / "digest").write_text(f"{'a' * 63}0\n")
    (done / "ecode").write_text("0\n")  # finished: a0 is not in use
    removed = _prune(tmp_path, keep=3, grace=600, protect=(f"{'a' * 63}2.tar",))
    names = {name for name, _ in removed}
    assert names == {f"{'a' * 63}0.tar", partial.name}
    assert dict(removed)[f"{'a' * 63}0.tar"] == 1
    left = sorted(p.name[-5:] for p in code.glob("*.tar"))
    assert left == ["1.tar", "2.tar", "3.tar", "4.tar", "5.tar"]
    for path in code.glob("*.tar"):  # all used just now: none goes, whatever `keep`
        os.utime(path, (now, now))
    assert _prune(tmp_path, keep=1, grace=600) == ()
    assert _prune(tmp_path / "nowhere", keep=1, grace=0) == ()  # no cache there: nothing
