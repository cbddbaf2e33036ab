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


def test_the_scan_names_the_code_files_still_as_archived_for_the_spare_folder(tmp_path):
    run = tmp_path / "run"
    members = {}
    for rel in ("same.py", "sub/same.py", "edited.py", "chmodded.py", "linked.py", "grown.py"):
        _file(run / rel, old=True)
        (run / rel).chmod(0o644)
        members[rel] = ("f", 0o644, 1, 0)
    members["sub"] = ("d", 0o755, 0, 0)
    _file(run / "edited.py")  # rewritten by the run: a result, not intact
    (run / "chmodded.py").chmod(0o755)  # its time unchanged, its mode not as archived
    os.link(run / "linked.py", tmp_path / "elsewhere")  # not ours to write in place
    (run / "grown.py").write_text("xx")
    os.utime(run / "grown.py", (0, 0))  # an old time, another size
    known: set = set()
    found = result_files(str(run), [], members, known)
    assert found == ["edited.py"]
    assert known == {"same.py", "sub/same.py"}


def test_without_posix_spawn_the_wrapper_runs_from_a_file_in_its_own_session(tmp_path,
                                                                          monkeypatch):
    """The fallback (no posix_spawn, or a script too long for a pipe) imports subprocess
    only when it runs: the agent's start no longer pays for it."""
    from liborchestra import node_agent

    monkeypatch.setattr(node_agent, "SPAWN", False)
    run, internal = tmp_path / "run", tmp_path / "run" / INTERNAL
    internal.mkdir(parents=True)
    pid, wait = node_agent._spawn('echo "$PWD $(ps -o sid= -p $$)" > out\n', str(run),
                                  str(internal))
    wait()
    folder, session = (run / "out").read_text().split()
    assert folder == str(run) and int(session) == pid  # its own session, in the run folder
    assert (internal / "run.sh").is_file()
