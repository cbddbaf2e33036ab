"""The catalog's cache of parsed records: used while a record file is unchanged, and never
wrong when one is written, rewritten, added, removed, damaged, or the cache itself is."""

from __future__ import annotations

import marshal
import os
from pathlib import Path

import pytest

from expegit import catalog, views
from expegit.campaign import CampaignError
from expegit.record import Record, write


def _record(ident: str, state: str = "completed", **over) -> Record:
    return Record(id=ident, commit="c" * 40, script="t.sh", arguments=("--lr=0.1",),
                  profile="loc", state=state, exit_code=0 if state == "completed" else 3,
                  parameters={"lr": 0.1}, **over)


@pytest.fixture
def runs(tmp_path: Path) -> Path:
    """A runs/ folder beside a .git directory, as in a campaign."""
    (tmp_path / ".git").mkdir()
    folder = tmp_path / "runs"
    for k in range(5):
        write(folder / f"r{k}", _record(f"r{k}", started=float(k)))
    return folder


def _cache(runs: Path) -> Path:
    return runs.parent / ".git" / "expegit" / catalog.CACHE


def _ids(runs: Path) -> dict[str, str]:
    return {d["id"]: d["state"] for d in catalog.records(runs)}


def test_cache_is_written_then_used_while_files_are_unchanged(runs: Path):
    assert _ids(runs) == {f"r{k}": "completed" for k in range(5)}
    assert _cache(runs).is_file()
    # forge the cached data of r0, keeping its file's key: a read must take it from the cache
    tag, entries = marshal.loads(_cache(runs).read_bytes())
    key, data = entries["r0"]
    entries["r0"] = (key, {**data, "state": "forged"})
    _cache(runs).write_bytes(marshal.dumps((tag, entries)))
    assert _ids(runs)["r0"] == "forged"
    # ...and the first change to the file replaces it
    write(runs / "r0", _record("r0", state="failed", started=0.0))
    assert _ids(runs)["r0"] == "failed"


def test_added_rewritten_removed_and_in_flight_records_are_seen(runs: Path):
    _ids(runs)
    write(runs / "new", _record("new", state="lost"))
    (runs / "in-flight").mkdir()  # no record file yet: not a record
    (runs / "in-flight" / "stdout").write_text("half")
    os.remove(runs / "r1" / "record.json")
    (runs / "r2" / "record.json").rename(runs / "r2" / "tmp")
    write(runs / "r3", _record("r3", state="failed", message="rewritten", started=3.0))
    got = _ids(runs)
    assert got == {"r0": "completed", "r3": "failed", "r4": "completed", "new": "lost"}
    assert views.status(runs).total == 4
    columns, rows = views.table(runs)
    assert [r["id"] for r in rows] == ["new", "r0", "r3", "r4"]  # by start time, then id
    assert "param.lr" in columns


def test_a_damaged_record_is_an_error_even_with_a_cache(runs: Path):
    _ids(runs)
    (runs / "r4" / "record.json").write_text('{"id": "r4"}')
    with pytest.raises(CampaignError, match="r4/record.json: not a valid expegit record"):
        catalog.records(runs)
    (runs / "r4" / "record.json").write_text("[1")
    with pytest.raises(CampaignError, match="r4/record.json: not a valid expegit record"):
        views.status(runs)


@pytest.mark.parametrize("content", [b"", b"garbage", marshal.dumps(("other", {}))])
def test_a_broken_or_foreign_cache_is_ignored_and_replaced(runs: Path, content: bytes):
    _ids(runs)
    _cache(runs).write_bytes(content)
    assert len(_ids(runs)) == 5
    tag, entries = marshal.loads(_cache(runs).read_bytes())
    assert tag == catalog._TAG and len(entries) == 5


def test_no_git_directory_no_cache(tmp_path: Path):
    write(tmp_path / "runs" / "a", _record("a"))
    assert _ids(tmp_path / "runs") == {"a": "completed"}
    assert not (tmp_path / ".git").exists()
    assert catalog.records(tmp_path / "nothing-here") == []


def test_export_fills_fields_an_older_record_lacks(runs: Path):
    (runs / "old").mkdir()
    (runs / "old" / "record.json").write_text(
        '{"id": "old", "commit": "%s", "script": "t.sh", "arguments": ["x"], '
        '"profile": "loc", "state": "completed"}' % ("d" * 40))
    rows = {r["id"]: r for r in views.table(runs)[1]}
    assert rows["old"]["by"] == "" and rows["old"]["features"] == "" \
        and rows["old"]["rerun_of"] is None and rows["old"]["arguments"] == "x"
    assert views.export(runs, "json").count("\n") == 6 + 2  # one object a line
