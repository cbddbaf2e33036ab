"""The files of an execution's folder, and only those: every path a URL names is resolved and
must stay inside the folder (no `..`, no absolute path, no symlink pointing out), else NotFound.
"""

from __future__ import annotations

import os
from pathlib import Path, PurePosixPath

import attrs

from orchestra.records import NotFound

IMAGES = {".png": "image/png", ".jpg": "image/jpeg", ".jpeg": "image/jpeg",
          ".gif": "image/gif", ".svg": "image/svg+xml", ".webp": "image/webp"}
STREAMS = ("stdout", "stderr")
TAIL_BYTES = 16 * 1024
MAX_LISTED = 500  # files listed on an execution's page


@attrs.frozen
class File:
    path: str  # relative to the execution's folder, with '/'
    size: int

    @property
    def image(self) -> bool:
        return PurePosixPath(self.path).suffix.lower() in IMAGES


def confined(root: Path, relative: str) -> Path:
    """The regular file `relative` names under `root`, or NotFound if it is not one or lies
    outside (whatever the spelling: `..`, decoded `%2e%2e%2f`, absolute, symlinks out)."""
    if not relative or "\0" in relative or "\\" in relative:
        raise NotFound("no such file")
    pure = PurePosixPath(relative)
    if pure.is_absolute() or any(part in ("..", "") for part in relative.split("/")):
        raise NotFound("no such file")
    try:
        base = root.resolve(strict=True)
        target = (base / pure).resolve(strict=True)
    except (OSError, RuntimeError):
        raise NotFound("no such file") from None
    if not target.is_relative_to(base) or not target.is_file():
        raise NotFound("no such file")
    return target


def listing(root: Path, limit: int = MAX_LISTED) -> tuple[list[File], bool]:
    """The regular files under `root` that stay inside it (symlinks out are left out), sorted;
    and whether the list was cut at `limit`."""
    try:
        base = root.resolve(strict=True)
    except OSError:
        return [], False
    out: list[File] = []
    for folder, dirs, files in os.walk(base):
        dirs.sort()
        for name in sorted(files):
            path = Path(folder) / name
            try:
                real = path.resolve(strict=True)
            except OSError:
                continue
            if real.is_relative_to(base) and real.is_file():
                out.append(File(path.relative_to(base).as_posix(), real.stat().st_size))
                if len(out) >= limit:
                    return out, True
    return out, False


def tail(path: Path, limit: int = TAIL_BYTES) -> tuple[str, bool]:
    """The last `limit` bytes of a text file, decoded, and whether it was cut."""
    if not path.is_file():
        return "", False
    size = path.stat().st_size
    with open(path, "rb") as f:
        f.seek(max(0, size - limit))
        data = f.read()
    return data.decode(errors="replace"), size > limit
