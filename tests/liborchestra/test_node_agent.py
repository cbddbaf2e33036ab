"""The node agent's choice of a run's results, on a real folder: what `find -newermt @1` would
pick (the code dates from 1970), pruned by the fetch-ignore rules, in os.walk's order."""

from __future__ import annotations

import os

from liborchestra.node_agent import INTERNAL, result_files


def _file(path, old: bool = False) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("x")
    if old:  # as the agent writes the code: dated 1970
        os.utime(path, (0, 0))


def test_results_are_the_new_files_and_links_in_walk_order_without_ignored_ones(tmp_path):
    run = tmp_path / "run"
    for rel in ("train.py", "pkg/model.py", "pkg/sub/util.py", "data/big.csv"):
        _file(run / rel, old=True)
    for rel in ("out.txt", "a.log", "pkg/sub/new.bin", "pkg/weights.pt", "data/made.csv",
                "cache/c.bin", "z/deep/er/last.txt"):
        _file(run / rel)
    _file(run / "pkg/model.py")  # code changed in place by the run: a result
    os.symlink("pkg", run / "link-to-dir")  # made by the run: kept as a link, not followed
    os.symlink("nowhere", run / "broken")
    old_link = run / "old-link"
    os.symlink("train.py", old_link)
    os.utime(old_link, (0, 0), follow_symlinks=False)
    for name in ("stdout", "stderr", "ecode", "pid", "node"):
        _file(run / INTERNAL / name)
    found = result_files(str(run), ["*.log", "cache/", "/data/made.csv"])
    assert found == ["link-to-dir", "broken", "out.txt", "pkg/model.py", "pkg/weights.pt",
                     "pkg/sub/new.bin", "z/deep/er/last.txt",
                     f"{INTERNAL}/stdout", f"{INTERNAL}/stderr", f"{INTERNAL}/ecode"]

