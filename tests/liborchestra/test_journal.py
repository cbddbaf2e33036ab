"""The journal's commits, as another process (a `runaway status`, the web page) sees them."""

from __future__ import annotations

import json
import sqlite3

from liborchestra.journal import Journal
from liborchestra.results import write_record


def _states(path) -> dict[int, tuple]:
    """The committed rows, read over a connection of their own."""
    with sqlite3.connect(path) as other:
        return {seq: (state, run, payload) for seq, state, run, payload in
                other.execute("SELECT seq, state, run, payload FROM executions")}


def _journal(tmp_path, n: int = 2) -> Journal:
    journal = Journal.create(tmp_path / "b" / "journal.sqlite", {})
    journal.add((f"u{i}", (f"--x={i}",), f"x {i}") for i in range(n))
    return journal


def test_a_started_run_is_committed_with_its_placement(tmp_path):
    journal = _journal(tmp_path)
    journal.started(1, "u0", commit=False)
    assert journal.get(1).state == "submitted"  # this connection sees its own write
    assert _states(journal.path)[1][:2] == ("queued", None)  # others do not, yet
    journal.placed(1, "node1", "0")
    assert _states(journal.path)[1][:2] == ("running", "u0")


def test_commit_makes_waiting_writes_visible(tmp_path):
    journal = _journal(tmp_path)
    journal.started(1, "u0", commit=False)
    journal.started(2, "u1", commit=False)
    journal.commit()
    assert [v[:2] for v in _states(journal.path).values()] == [("submitted", "u0"),
                                                               ("submitted", "u1")]
    journal.commit()  # nothing waiting: no error


def test_finished_returns_the_row_as_it_is_now(tmp_path):
    journal = _journal(tmp_path)
    journal.started(1, "u0")
    journal.placed(1, "node1", "3", "job7", "d" * 64)
    row = journal.finished(1, "failed", 2, "boom", recorded=False)
    assert (row.seq, row.state, row.ecode, row.message, row.node, row.slot, row.allocation,
            row.run, row.attempts) == (1, "failed", 2, "boom", "node1", "3", "job7", "u0", 1)
    assert row.finished is not None and row.started is not None
    assert row.argv == ("--x=0",)
    assert journal.unrecorded() == [row]


def test_a_payload_written_while_recording_is_committed_with_recorded(tmp_path):
    journal = _journal(tmp_path)
    journal.finished(1, "completed", 0, recorded=False)
    journal.update_payload(1, {"objective": 1.5}, commit=False)
    assert json.loads(_states(journal.path)[1][2]) == {}
    journal.recorded(1, 1.5)
    assert json.loads(_states(journal.path)[1][2]) == {"objective": 1.5}
    assert journal.unrecorded() == []


def test_a_record_file_is_written_whole_and_its_folder_made(tmp_path):
    data = {"uuid": "u", "arguments": ["--lr", "0.1"], "parameters": {"lr": 0.1, "b": "é"},
            "ecode": None, "started": 1.5}
    folder = tmp_path / "new" / "folder"
    write_record(folder, data)  # made when missing
    assert json.loads((folder / "runaway.json").read_text()) == data
    write_record(folder, {**data, "ecode": 3})  # replaced whole
    assert json.loads((folder / "runaway.json").read_text())["ecode"] == 3
    assert sorted(p.name for p in folder.iterdir()) == ["runaway.json"]  # no temporary left


def test_leftovers_are_the_placed_runs_that_never_reported_an_exit_code(tmp_path):
    journal = _journal(tmp_path, n=6)
    # 1: never started. 2: drained after placement (its folder may linger). 3: requeued
    # before any node took it. 4: cancelled after it exited. 5: lost on a node. 6: completed.
    journal.started(2, "u1")
    journal.placed(2, "node1", "0")
    journal.finished(2, "queued", None, "drained")
    journal.started(3, "u2")
    journal.finished(3, "queued", None, "interrupted")
    journal.started(4, "u3")
    journal.placed(4, "node2", "1")
    journal.finished(4, "cancelled", 0)
    journal.started(5, "u4")
    journal.placed(5, "node3", "2")
    journal.finished(5, "lost", None, "node down", lost=True)
    journal.started(6, "u5")
    journal.placed(6, "node1", "1")
    journal.finished(6, "completed", 0)
    found = journal.leftovers(("queued", "cancelled", "lost"))
    assert [(r.seq, r.state, r.node) for r in found] == [(2, "queued", "node1"),
                                                         (5, "lost", "node3")]
    assert journal.leftovers(("lost",)) == [journal.get(5)]
