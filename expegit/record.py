"""The record of one execution: `runs/<id>/record.json`, beside its stdout, stderr and files.

A record is one file in its own folder named by a random UUID, so records made on different
machines never share a path and merges of records never conflict. The file is written last and
atomically (temporary name, then rename): a folder without it is an execution whose recording
has not finished.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path

import attrs

RECORD = "record.json"
STATES = ("completed", "failed", "lost", "cancelled")


@attrs.frozen
class Record:
    """What is known of one execution, forever (JSON in the campaign)."""

    id: str
    commit: str
    script: str
    arguments: tuple[str, ...] = attrs.field(converter=tuple)
    profile: str
    state: str
    patch: str | None = None
    label: str = ""
    parameters: dict = attrs.field(factory=dict)
    exit_code: int | None = None
    node: str | None = None
    slot: str | None = None
    allocation: str | None = None
    submitted: float | None = None  # wall-clock times (seconds since the epoch)
    started: float | None = None
    ended: float | None = None
    duration: float | None = None  # seconds the script ran
    # started by a driver that died, collected on --resume: `started` is exact, `ended` is
    # when its results were fetched (exact only if it still ran then)
    recovered: bool = False
    features: tuple[float, ...] = attrs.field(default=(), converter=tuple)
    metrics: dict = attrs.field(factory=dict)
    message: str = ""
    attempts: int = 1
    run: str = ""  # the `expegit run` (driver) it belongs to
    rerun_of: str | None = None
    by: str = ""  # user@host of the driver that recorded it
    tool: str = ""  # expegit version
    large: tuple[str, ...] = attrs.field(default=(), converter=tuple)  # files in git-annex

    def to_json(self) -> str:
        data = attrs.asdict(self)
        data["arguments"], data["features"] = list(self.arguments), list(self.features)
        data["large"] = list(self.large)
        return json.dumps(data, indent=1, sort_keys=True, allow_nan=False) + "\n"

    @classmethod
    def from_json(cls, text: str | bytes, where: object = "record") -> Record:
        """Read a record; a damaged one is a CampaignError naming `where`."""
        return cls.from_data(cls.parse(text, where), where)

    @staticmethod
    def parse(text: str | bytes, where: object = "record") -> dict:
        """The JSON object of a record file (not yet checked as a record)."""
        try:
            data = json.loads(text)
        except ValueError as error:
            data = error
        if not isinstance(data, dict):
            from expegit.campaign import CampaignError

            raise CampaignError(f"{where}: not a valid expegit record ({data})")
        return data

    @classmethod
    def from_data(cls, data: dict, where: object = "record") -> Record:
        """The record of a record file's JSON object (unknown keys, from newer versions, are
        ignored); a damaged one is a CampaignError naming `where`."""
        try:
            return cls(**{k: v for k, v in data.items() if k in _NAMES})
        except (ValueError, TypeError, AttributeError) as error:
            from expegit.campaign import CampaignError

            raise CampaignError(f"{where}: not a valid expegit record ({error})") from None


_NAMES = frozenset(f.name for f in attrs.fields(Record))
REQUIRED = frozenset(f.name for f in attrs.fields(Record) if f.default is attrs.NOTHING)
# what a field missing from an older record file reads as
DEFAULTS = {f.name: f.default.factory() if isinstance(f.default, attrs.Factory) else f.default
            for f in attrs.fields(Record) if f.default is not attrs.NOTHING}


def parse_parameters(argv: tuple[str, ...]) -> dict[str, object]:
    """Named parameters of an argv: `--k=v`, `--k v`, `-k v` and `--flag` (True); values that
    read as numbers become numbers. Positional words are left to `arguments`."""
    out: dict[str, object] = {}
    i = 0
    while i < len(argv):
        word = argv[i]
        i += 1
        if not word.startswith("-") or word in ("-", "--") or _number(word) is not None:
            continue
        name = word.lstrip("-")
        if "=" in name:
            name, value = name.split("=", 1)
            out[name] = _value(value)
        elif i < len(argv) and (not argv[i].startswith("-") or _number(argv[i]) is not None):
            out[name] = _value(argv[i])
            i += 1
        else:
            out[name] = True
    return out


def _number(text: str) -> int | float | None:
    try:
        return int(text)
    except ValueError:
        pass
    try:
        value = float(text)
    except ValueError:
        return None
    return value if value == value and abs(value) != float("inf") else None


def _value(text: str) -> object:
    number = _number(text)
    return text if number is None else number


def write(folder: Path, record: Record) -> Path:
    """Write the record file atomically, last."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / RECORD
    tmp = folder / f".{RECORD}.tmp"
    tmp.write_text(record.to_json())
    os.replace(tmp, path)
    return path


def read(folder: Path) -> Record:
    return Record.from_json((folder / RECORD).read_text(), folder / RECORD)


def all_records(runs: Path) -> Iterator[Record]:
    """Every record of a campaign, in no particular order (through the catalog's cache)."""
    from expegit.catalog import records

    for data in records(runs):
        yield Record.from_data(data)


def find(runs: Path, prefix: str) -> Path:
    """The folder of the record whose id starts with `prefix` (unique)."""
    from expegit.campaign import CampaignError

    matches = [p for p in runs.glob(f"{prefix}*") if (p / RECORD).is_file()] if prefix else []
    if not matches:
        raise CampaignError(f"{prefix}: no such run in {runs}")
    if len(matches) > 1:
        raise CampaignError(f"{prefix}: ambiguous ({len(matches)} runs start with it)")
    return matches[0]
