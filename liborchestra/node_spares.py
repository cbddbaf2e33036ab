"""Spare run folders: a node agent keeps finished run folders, renamed aside, to hold later
runs instead of removing them and making new ones.

Shipped to the nodes with node_agent.py (standard library only)."""

from __future__ import annotations

import os
import shutil
import stat

if __package__:  # imported by the driver
    from liborchestra.node_keeper import NEXT
else:  # run on a node, from the folder it was shipped in with its siblings
    from node_keeper import NEXT

SPARES = 256  # finished run folders one agent keeps to hold later runs, at most
SPARE_BYTES = 256 << 20  # bytes of code in them, at most
RECORDS = ("pid", "ecode")  # gone from a spare folder (readers wait for them), renamed to
# their spares (`pid.next`...), which the next run writes in place and renames back
KEPT = ("stdout", "stderr", "node", "digest") + tuple(name + NEXT for name in RECORDS)
# (rewritten when the folder is taken: kept, their blocks are written over, not freed)


class Spares:
    """Finished run folders, moved aside to hold later runs instead of being removed.

    Removing a run folder and making the next one frees and takes about nine inodes per
    execution. Where a freed inode is slow to take again (ext4 without a journal skips every
    inode freed in the last minute, one block lookup each: on the test machine that was 45%
    of all CPU in a batch of `true`), and on parallel filesystems where each is a metadata
    request, that costs more than a short execution. A folder is kept only when nothing of
    its run's process group is left running, so a straggler of the script's own cannot
    write into a later run (one that left the group, with setsid, still could); what a run
    made is removed when the folder is taken again."""

    def __init__(self, internal: str) -> None:
        self.internal = internal  # the run folder's own files (.orchestra)
        self.folder = ""
        self.free: list = []  # (path, bytes of code in it, the archive it holds)
        self.made = 0
        self.bytes = 0

    def keep(self, run: str, held: tuple, known: frozenset = frozenset()) -> bool:
        """Move `run` aside (`held`: the bytes and the archive of the code in it; `known`: the
        code files its results' scan found intact); False when the spares are full (then it
        is removed)."""
        size, archive = held
        if len(self.free) >= SPARES or self.bytes + size > SPARE_BYTES:
            return False
        if not self.folder:
            root = os.path.dirname(os.path.dirname(run))  # run folders are <root>/runs/<id>
            self.folder = os.path.join(root, "spare", f"{os.uname().nodename}-{os.getpid()}")
            _remove_stale_spares(os.path.dirname(self.folder))
            os.makedirs(self.folder, exist_ok=True)
        spare = os.path.join(self.folder, str(self.made))
        self.made += 1
        os.rename(run, spare)
        self.free.append((spare, size, archive, known))
        self.bytes += size
        return True

    def take(self, run: str, archive: str, files: dict) -> frozenset | None:
        """Move a spare folder to `run`, emptied of all but the code's files and folders
        (`files`: path -> kind, mode, size, mtime), which are rewritten in place, the same
        inodes. When it held the same archive, the code files it returns are intact (size,
        time and mode as archived, as rsync tells them, when looked at here or when its run
        ended) and need no rewriting. None when there is no spare."""
        while self.free:
            spare, size, held, known = self.free.pop()
            self.bytes -= size
            intact: set = set()
            try:  # the files found intact when its run ended, for this archive, are not
                # looked at again (a second stat of every file of the code per execution)
                _clear(spare, self.internal, files, "", intact,
                       known if held == archive else frozenset())
            except OSError:
                shutil.rmtree(spare, ignore_errors=True)
                continue
            try:
                os.rename(spare, run)
            except OSError:  # `run` is there already (a resumed run): keep the spare
                self.free.append((spare, size, held, known))
                self.bytes += size
                return None
            return frozenset(intact) if held == archive else frozenset()
        return None

    def close(self) -> None:
        if self.folder:
            shutil.rmtree(self.folder, ignore_errors=True)


def intact_file(entry, st, member: tuple) -> bool:
    """Whether a directory entry (`st`: its lstat) is a code file as archived (`member`: kind,
    mode, size, mtime), ours to write in place: size, time and mode as rsync tells them."""
    kind, mode, size, mtime = member
    return kind == "f" and entry.is_file(follow_symlinks=False) and bool(st.st_mode & 0o200) \
        and st.st_nlink == 1 and st.st_size == size \
        and st.st_mtime_ns == int(mtime * 10**9) and stat.S_IMODE(st.st_mode) == mode


def _clear(folder: str, internal: str, files: dict, rel: str, intact: set,
           known: frozenset) -> None:
    with os.scandir(folder) as entries:
        for entry in entries:
            name = entry.name if not rel else rel + "/" + entry.name
            if name in known:
                intact.add(name)
                continue
            if name == internal:
                with os.scandir(entry.path) as found:
                    records = list(found)
                for record in records:
                    if record.name in RECORDS:
                        os.replace(record.path, record.path + NEXT)
                    elif record.name not in KEPT:
                        _remove(record)
                continue
            member = files.get(name, ("", 0, 0, 0))
            st = entry.stat(follow_symlinks=False)
            if entry.is_dir(follow_symlinks=False):
                if member[0] == "d" and st.st_mode & 0o700 == 0o700:
                    _clear(entry.path, internal, files, name, intact, known)
                else:
                    shutil.rmtree(entry.path)
            elif member[0] != "f" or not entry.is_file(follow_symlinks=False) \
                    or not st.st_mode & 0o200 or st.st_nlink != 1:  # a link: not ours to write
                os.unlink(entry.path)
            elif intact_file(entry, st, member):
                intact.add(name)


def _remove(entry) -> None:
    if entry.is_dir(follow_symlinks=False):
        shutil.rmtree(entry.path)
    else:
        os.unlink(entry.path)


def _remove_stale_spares(folder: str) -> None:
    """The spare folders of this host's agents that are gone (killed: no chance to clean)."""
    host = os.uname().nodename
    try:
        names = os.listdir(folder)
    except OSError:
        return
    for name in names:
        owner, _, pid = name.rpartition("-")
        if owner != host or not pid.isdigit():
            continue
        try:
            os.kill(int(pid), 0)
        except ProcessLookupError:
            shutil.rmtree(os.path.join(folder, name), ignore_errors=True)
        except OSError:
            pass  # alive, another user's
