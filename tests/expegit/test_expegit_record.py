"""Records: parsed parameters, the JSON file, finding a record by id prefix."""

from __future__ import annotations

import pytest

from expegit.campaign import CampaignError
from expegit.record import Record, all_records, find, parse_parameters, read, write


@pytest.mark.parametrize(("argv", "expected"), [
    (("--lr=0.1", "--bs", "32", "--name=a b"), {"lr": 0.1, "bs": 32, "name": "a b"}),
    (("--verbose", "-n", "-3", "pos"), {"verbose": True, "n": -3}),
    (("--x=1e-3", "--y=nan", "--", "--z"), {"x": 0.001, "y": "nan", "z": True}),
    (("--k=v=w", "--flag", "--other"), {"k": "v=w", "flag": True, "other": True}),
    ((), {}),
])
def test_parameters(argv, expected):
    assert parse_parameters(argv) == expected


def _record(**over) -> Record:
    base = dict(id="0123abcd-0000", commit="c" * 40, script="train.sh",
                arguments=("--lr=0.1",), profile="loc", state="completed", exit_code=0,
                features=(1.0, 2.5), metrics={"loss": 0.2}, parameters={"lr": 0.1})
    return Record(**{**base, **over})


def test_roundtrip_and_atomic_write(tmp_path):
    rec = _record()
    write(tmp_path / rec.id, rec)
    assert read(tmp_path / rec.id) == rec
    assert [p.name for p in (tmp_path / rec.id).iterdir()] == ["record.json"]  # no temp left


def test_nan_features_are_refused(tmp_path):
    with pytest.raises(ValueError):
        _record(features=(float("nan"),)).to_json()


def test_find_by_prefix(tmp_path):
    for ident in ("aaaa1111", "aaaa2222", "bbbb3333"):
        write(tmp_path / ident, _record(id=ident))
    (tmp_path / "cccc-unfinished").mkdir()  # no record file: not a record
    assert find(tmp_path, "bbbb").name == "bbbb3333"
    with pytest.raises(CampaignError, match="ambiguous"):
        find(tmp_path, "aaaa")
    with pytest.raises(CampaignError, match="no such run"):
        find(tmp_path, "cccc")
    assert sorted(r.id for r in all_records(tmp_path)) == ["aaaa1111", "aaaa2222", "bbbb3333"]


def test_a_damaged_record_is_one_clear_error(tmp_path):
    (tmp_path / "x").mkdir()
    (tmp_path / "x" / "record.json").write_text("{}")
    with pytest.raises(CampaignError, match="x/record.json: not a valid expegit record"):
        read(tmp_path / "x")
    (tmp_path / "x" / "record.json").write_text("[1")
    with pytest.raises(CampaignError, match="not a valid"):
        list(all_records(tmp_path))
