"""Code shipping and results fetching.

The code folder minus `.sendignore` globs becomes a deterministic tar named by its SHA-256, so the
same content always has the same name: it is sent once per remote filesystem, verified there,
and reused by every execution. Results come back as one tar of the files an execution created
or changed (minus `.fetchignore` globs), plus its stdout, stderr and exit code.
"""

from __future__ import annotations

import hashlib
import heapq
import io
import os
import re
import shlex
import stat
import tarfile
import tempfile
from pathlib import Path, PurePosixPath
from typing import Callable

import anyio
import attrs

from liborchestra.errors import TransferError
from liborchestra.node_agent import CODE_TIME, ignored
from liborchestra.node_keeper import INTERNAL
from liborchestra.shell import Shell

OUTPUT_MARKER = ".orchestra-output"  # written into local output folders; never shipped back out
LARGE_CODE = 50 * 2**20  # bytes: shipping more than this is said, with the biggest files
BIGGEST = 5  # how many of the biggest files a large-code warning names
CODE_CACHE_KEEP = 5  # archives kept per remote filesystem (the most recently used)
CODE_IN_USE_GRACE = 600.0  # seconds: an archive used this recently may be in use; kept


def mark_output(folder: Path) -> bool:
    """Mark `folder` as results (never shipped as code), creating it; but never a folder that
    already holds files of the user's: those would silently vanish from the next code shipped.
    True when the folder is marked."""
    marker = folder / OUTPUT_MARKER
    if marker.exists():
        return True
    if (folder.parent / OUTPUT_MARKER).exists():  # inside results already (a batch's folder):
        folder.mkdir(parents=True, exist_ok=True)  # a stat, not one more file per execution
        return True
    if folder.is_dir() and any(folder.iterdir()):
        return False
    folder.mkdir(parents=True, exist_ok=True)
    marker.touch()
    return True


@attrs.frozen
class CodeLeftOut:
    """Folders of the code that were not shipped because they are marked as results."""

    folders: tuple[str, ...]


@attrs.frozen
class CodeLarge:
    """The code about to be shipped is large (`size` bytes): its biggest files, by size."""

    size: int
    files: int
    biggest: tuple[tuple[str, int], ...]


@attrs.frozen
class CodePruned:
    """Older code archives removed from a remote cache (name, bytes), to keep it bounded."""

    filesystem: str
    removed: tuple[tuple[str, int], ...]


@attrs.frozen
class IgnoreRules:
    """Glob patterns as in the original runaway ignore files.

    A pattern without `/` matches a file or folder name anywhere; a pattern with `/` matches the
    path from the root folder; a trailing `/` matches folders only; `#` starts a comment.
    """

    patterns: tuple[str, ...] = ()

    @classmethod
    def read(cls, path: Path) -> IgnoreRules:
        if not path.is_file():
            return cls()
        lines = (line.strip() for line in path.read_text().splitlines())
        return cls(tuple(line for line in lines if line and not line.startswith("#")))

    def ignores(self, relpath: str, is_dir: bool) -> bool:
        return ignored(self.patterns, relpath, is_dir)  # the node agent's rules, written once

    def find_predicates(self) -> str:
        """The same rules as `find` tests, for pruning on the remote side."""
        tests = [f"-path ./{INTERNAL}"]
        for pattern in self.patterns:
            bare = pattern.rstrip("/")
            kind = " -type d" if pattern.endswith("/") else ""
            if "/" in bare:
                tests.append(f"\\( -path {shlex.quote('./' + bare.lstrip('/'))}{kind} \\)")
            else:
                tests.append(f"\\( -name {shlex.quote(bare)}{kind} \\)")
        return " -o ".join(tests)


@attrs.frozen
class CodeArchive:
    digest: str
    data: bytes = attrs.field(repr=False)
    files: int
    left_out: tuple[str, ...] = ()  # folders skipped because they are marked as results
    biggest: tuple[tuple[str, int], ...] = ()  # the largest files (path, bytes), largest first

    @property
    def name(self) -> str:
        return f"{self.digest}.tar"


def build_archive(folder: Path, ignore_file: str = ".sendignore",
                  extra: tuple[tuple[str, Path], ...] = ()) -> CodeArchive:
    """Tar `folder` deterministically (sorted, no times or owners) and hash it; `extra`
    folders (e.g. a sweep's config files) are added under the given names."""
    folder = folder.resolve()
    rules = IgnoreRules.read(folder / ignore_file)
    buffer = io.BytesIO()
    count = 0
    left_out: list[str] = []
    sizes: list[tuple[int, str]] = []
    entries = [*_walk(folder, rules, left_out)]
    for name, path in extra:
        entries.append((name, path, True))
        skipped: list[str] = []
        entries += [(f"{name}/{rel}", p, d)
                    for rel, p, d in _walk(path.resolve(), IgnoreRules(), skipped)]
        left_out += [f"{name}/{rel}" for rel in skipped]
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for relpath, path, is_dir in entries:
            info = tarfile.TarInfo(relpath)
            mode = path.lstat().st_mode
            info.mode = stat.S_IMODE(mode) | 0o200
            info.mtime = 0
            if is_dir:
                info.type = tarfile.DIRTYPE
                tar.addfile(info)
            elif stat.S_ISLNK(mode):
                info.type, info.linkname = tarfile.SYMTYPE, os.readlink(path)
                tar.addfile(info)
            elif stat.S_ISREG(mode):
                try:
                    data = path.read_bytes()
                except OSError as error:
                    raise TransferError(f"{path}: cannot read for shipping: "
                                        f"{error.strerror}") from None
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
                count += 1
                sizes.append((len(data), relpath))
    data = buffer.getvalue()
    biggest = tuple((path, size) for size, path in heapq.nlargest(BIGGEST, sizes))
    return CodeArchive(hashlib.sha256(data).hexdigest(), data, count, tuple(left_out), biggest)


def _walk(folder: Path, rules: IgnoreRules, left_out: list[str]):
    """(relative path, path, is a folder) of everything shipped; folders skipped for being
    marked as results are added to `left_out` (ignored ones are the user's own choice)."""
    for root, dirs, files in os.walk(folder):
        base = Path(root)
        rel_root = base.relative_to(folder).as_posix()
        keep = []
        for name in sorted(dirs):
            rel = name if rel_root == "." else f"{rel_root}/{name}"
            path = base / name
            if rules.ignores(rel, True) or (path / OUTPUT_MARKER).exists() or path.is_symlink():
                if path.is_symlink() and not rules.ignores(rel, False):
                    yield rel, path, False
                elif not rules.ignores(rel, True):
                    left_out.append(rel)
                continue
            keep.append(name)
            yield rel, path, True
        dirs[:] = keep
        for name in sorted(files):
            rel = name if rel_root == "." else f"{rel_root}/{name}"
            if not rules.ignores(rel, False):
                yield rel, base / name, False


def remote_path(path: str) -> str:
    """A shell word for a remote path: quoted, with a leading `~/` left to the remote $HOME.
    A relative path is relative to $HOME too, as `ssh host cmd` would take it (and the same on
    `local`: the wrapper changes folder before it uses the path)."""
    if path == "~":
        return '"$HOME"'
    if path.startswith("~/"):
        return '"$HOME"/' + shlex.quote(path[2:])
    if not path.startswith("/"):
        return '"$HOME"/' + shlex.quote(path)
    return shlex.quote(path)


class CodeCache:
    """Which archives each filesystem already holds; one upload per (filesystem, digest).

    It says (through `emit`) what is left out of an archive and when one is large, once per
    archive; after each upload it prunes the filesystem's cache to the CODE_CACHE_KEEP most
    recently used archives, never one a run still uses or one used in the last
    CODE_IN_USE_GRACE seconds (another driver may be starting runs from it)."""

    def __init__(self, emit: Callable[[object], None] | None = None,
                 keep: int = CODE_CACHE_KEEP) -> None:
        self._present: set[tuple[str, str]] = set()
        self._sent: list[tuple[Shell, str]] = []
        self._locks: dict[tuple[str, str], anyio.Lock] = {}
        self._said: set[str] = set()
        self.emit = emit or (lambda event: None)
        self.keep = keep
        self.uploads = 0
        self.bytes_sent = 0

    def forget(self, filesystem: str, digest: str) -> None:
        """The archive was found missing there (pruned or cleaned since): check, and send it
        again, at its next use."""
        self._present.discard((filesystem, digest))

    async def ensure(self, shell: Shell, filesystem: str, root: str,
                     archive: CodeArchive) -> bool:
        """Make sure `root/code/<digest>.tar` exists and is intact; True when it was sent now."""
        key = (filesystem, archive.digest)
        if key in self._present:
            return False
        lock = self._locks.setdefault(key, anyio.Lock())
        async with lock:
            if key in self._present:
                return False
            if archive.digest not in self._said:
                self._said.add(archive.digest)
                if archive.left_out:
                    self.emit(CodeLeftOut(archive.left_out))
            sent = await self._ensure(shell, root, archive)
            self._present.add(key)
            self._sent.append((shell, archive.digest))
        if sent:
            await self._prune(shell, filesystem, root, archive)
        return sent

    async def _prune(self, shell: Shell, filesystem: str, root: str,
                     archive: CodeArchive) -> None:
        done = await shell.run(prune_command(root, self.keep, CODE_IN_USE_GRACE,
                                             protect=(archive.name,)))
        removed = parse_removed(done.stdout.decode(errors="replace"))
        if removed:
            self.emit(CodePruned(filesystem, removed))

    def sent_to(self) -> list[tuple[Shell, str]]:
        """One shell per (filesystem, digest) this cache placed or found, for cleanup."""
        return list(self._sent)

    async def _ensure(self, shell: Shell, root: str, archive: CodeArchive) -> bool:
        target = f"{remote_path(root)}/code/{archive.name}"
        probe = await shell.run(f"test -f {target}")
        if probe.returncode == 0:
            return False
        if len(archive.data) > LARGE_CODE:
            self.emit(CodeLarge(len(archive.data), archive.files, archive.biggest))
        tmp = f"{remote_path(root)}/code/.{archive.name}.$$"
        command = (f"set -e; mkdir -p {remote_path(root)}/code; cat > {tmp}; "
                   f"if ! sha256sum < {tmp} | sed 's/ .*//' | "
                   f"grep -qx {shlex.quote(archive.digest)}; then rm -f {tmp}; "
                   "echo 'hash mismatch after upload' >&2; exit 3; fi; "
                   f"mv -f {tmp} {target}")
        done = await shell.run(command, input=archive.data)
        if done.returncode != 0:
            raise TransferError(f"{shell.name}: could not store the code archive under "
                                f"{root}/code: {done.stderr.decode(errors='replace').strip()}")
        self.uploads += 1
        self.bytes_sent += len(archive.data)
        return True


_PRUNE = r"""cd @ROOT@/code 2>/dev/null || exit 0
now=$(date +%s)
inuse=$(for d in ../runs/*/@INTERNAL@; do
  [ -d "$d" ] && [ ! -s "$d/ecode" ] && cat "$d/digest" 2>/dev/null; done)
n=0
for f in $(ls -t -- *.tar 2>/dev/null) .*.tar.*; do
  [ -f "$f" ] || continue
  case $f in .*) ;; *) n=$((n + 1)); [ $n -le @KEEP@ ] && continue;; esac
  for p in @SPARED@; do [ "$f" = "$p" ] && continue 2; done
  t=$(stat -c %Y -- "$f") || continue
  [ $((now - t)) -lt @GRACE@ ] && continue
  printf '%s\n' "$inuse" | grep -qx -- "${f%.tar}" && continue
  s=$(stat -c %s -- "$f") && rm -f -- "$f" && echo "removed $f $s"
done
true
"""


def prune_command(root: str, keep: int, grace: float, protect: tuple[str, ...] = ()) -> str:
    """Remote command removing the archives of `root/code` beyond the `keep` most recently
    used, except those a run without an exit code names in its `digest` file, those used in
    the last `grace` seconds and `protect`; also partial uploads older than `grace`. Prints
    `removed NAME BYTES` per file removed."""
    spared = " ".join(shlex.quote(name) for name in protect) or "-"
    values = {"ROOT": remote_path(root), "INTERNAL": INTERNAL, "KEEP": str(int(keep)),
              "SPARED": spared, "GRACE": str(int(grace))}
    return re.sub(r"@([A-Z]+)@", lambda m: values[m.group(1)], _PRUNE)


def parse_removed(text: str) -> tuple[tuple[str, int], ...]:
    """The (name, bytes) lines of `prune_command`'s output."""
    out = []
    for line in text.splitlines():
        parts = line.split()
        if len(parts) == 3 and parts[0] == "removed" and parts[2].isdigit():
            out.append((parts[1], int(parts[2])))
    return tuple(out)


def pack_command(run_dir: str, rules: IgnoreRules) -> str:
    """Remote command writing to stdout a tar of the run's new files and its record (the
    code's files date from 1970, so anything newer the run made or changed)."""
    prune = rules.find_predicates()
    return (f"cd {run_dir} && {{ find . \\( {prune} \\) -prune -o \\( -type f -o -type l \\) "
            f"-newermt @{CODE_TIME} -print0; "
            f"for f in stdout stderr ecode; do [ -e {INTERNAL}/$f ] && printf '%s\\0' "
            f"./{INTERNAL}/$f; done; }} | tar --null --no-recursion -T - -cf -")


class ResultSink:
    """Receives a results tar in chunks (spooled to disk), then unpacks it into a folder."""

    def __init__(self) -> None:
        self._file = tempfile.SpooledTemporaryFile(max_size=8 << 20)  # noqa: SIM115

    def write(self, chunk: bytes) -> None:
        self._file.write(chunk)

    def unpack(self, dest: Path | None) -> dict[str, bytes]:
        """Extract outputs into `dest`; return the wrapper's record (stdout, stderr, ecode)."""
        self._file.seek(0)
        record: dict[str, bytes] = {}
        try:
            with tarfile.open(fileobj=self._file, mode="r:") as tar:
                for member in tar:
                    _extract(tar, member, dest, record)
        except tarfile.TarError as error:
            raise TransferError(f"results archive is damaged: {error}") from None
        finally:
            self._file.close()
        return record


def _extract(tar: tarfile.TarFile, member: tarfile.TarInfo, dest: Path | None,
             record: dict[str, bytes]) -> None:
    name = PurePosixPath(member.name)
    parts = [p for p in name.parts if p != "."]
    if not parts or name.is_absolute() or ".." in parts:
        return
    if parts[0] == INTERNAL:
        if len(parts) == 2 and member.isfile():
            record[parts[1]] = tar.extractfile(member).read()
        return
    if dest is None or not (member.isfile() or member.issym()):
        return
    target = dest.joinpath(*parts)
    target.parent.mkdir(parents=True, exist_ok=True)
    if member.issym():
        if target.is_symlink() or target.exists():
            target.unlink()
        target.symlink_to(member.linkname)
        return
    with tar.extractfile(member) as src, open(target, "wb") as out:
        while chunk := src.read(1 << 20):
            out.write(chunk)
    os.chmod(target, stat.S_IMODE(member.mode) | 0o600)
