"""A campaign: a git repository holding the experiment's code as a submodule at `code/`, one
folder per execution under `runs/`, and a settings file `expegit.yml`.

Everything that is local to one clone and must never be shared (driver journals, exported code
trees, the write lock) lives under `.git/expegit/`, outside git's tracked files: two `expegit`
processes in one folder serialize their git writes on `.git/expegit/write.lock`, so neither
meets git's `index.lock`.

GitPython is imported when a command first needs git: `expegit status` and `export` read the
work tree's files only and start without it.
"""

from __future__ import annotations

import contextlib
import fcntl
import shutil
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import attrs
import yaml

from liborchestra.errors import OrchestraError

if TYPE_CHECKING:
    import git

SETTINGS = "expegit.yml"
CODE = "code"
RUNS = "runs"
PATCHES = "patches"
SCHEMA = 1
DEFAULT_THRESHOLD = 1 << 20  # bytes above which a result file goes to git-annex
GITIGNORE = ".orchestra-output\n"  # the engine's marker in output folders is local only


class CampaignError(OrchestraError):
    """A campaign cannot be made, found or changed; the message says why and what to do."""


@attrs.frozen
class Settings:
    """What every clone shares about the campaign (committed in expegit.yml)."""

    schema: int = SCHEMA
    id: str = ""  # made at init: two campaigns never share a first commit (made in the same
    # second from the same code, they did, and git then took one for the other's history)
    large_threshold: int = DEFAULT_THRESHOLD
    large: tuple[str, ...] = attrs.field(default=(), converter=tuple)
    annex: bool = False

    def to_yaml(self) -> str:
        data = attrs.asdict(self)
        data["large"] = list(self.large)
        return yaml.safe_dump(data, sort_keys=False)

    @classmethod
    def read(cls, path: Path) -> Settings:
        try:
            data = yaml.safe_load(path.read_text()) or {}
        except (OSError, yaml.YAMLError) as error:
            raise CampaignError(f"{path}: unreadable settings ({error})") from None
        if not isinstance(data, dict) or data.get("schema", 0) > SCHEMA:
            raise CampaignError(f"{path}: not settings this version of expegit understands")
        names = {f.name for f in attrs.fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in names})


def _git_error(error: git.GitCommandError) -> str:
    """The last meaningful line git printed, for a one-line error."""
    text = (error.stderr or error.stdout or "").strip()
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    for line in reversed(lines):
        for prefix in ("stderr: ", "fatal: ", "error: "):
            if line.startswith(prefix):
                line = line[len(prefix):]
        line = line.strip("'\" ")
        if line:
            return line
    return f"git {error.command[1] if len(error.command) > 1 else ''} failed"


@contextlib.contextmanager
def git_errors(what: str) -> Iterator[None]:
    """Turn a git failure into one CampaignError line that says what was being done."""
    try:
        yield
    except Exception as error:
        import git  # imported already: the block ran git

        if isinstance(error, git.GitCommandError):
            raise CampaignError(f"{what}: {_git_error(error)}") from None
        raise


class Campaign:
    """An opened campaign folder. Open with `Campaign.open`, make with `init` or `clone`."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.settings = Settings.read(root / SETTINGS)
        self._repo: git.Repo | None = None
        self._thread_lock = threading.RLock()
        self._depth = 0

    @property
    def repo(self) -> git.Repo:
        """The campaign's GitPython repository, opened on first use."""
        if self._repo is None:
            import git

            self._repo = git.Repo(self.root)
        return self._repo

    # -- finding and making ----------------------------------------------------------------

    @classmethod
    def open(cls, folder: Path | str = ".") -> Campaign:
        """The campaign holding `folder` (it or a parent)."""
        start = Path(folder).resolve()
        for candidate in (start, *start.parents):
            if (candidate / SETTINGS).is_file() and (candidate / ".git").exists():
                return cls(candidate)
        raise CampaignError(f"{start}: not an expegit campaign (no {SETTINGS} here or above; "
                            "make one with `expegit init DIR --code REPO`)")

    @classmethod
    def init(cls, folder: Path, code: str, annex: bool | None = None,
             threshold: int = DEFAULT_THRESHOLD, large: tuple[str, ...] = ()) -> Campaign:
        """Make `folder` a campaign around the code repository `code` (path or URL). On any
        failure nothing is left behind that was not there before."""
        folder = folder.resolve()
        if (folder / SETTINGS).exists():
            raise CampaignError(f"{folder}: already a campaign")
        if folder.exists() and any(folder.iterdir()):
            raise CampaignError(f"{folder}: not empty; init makes a campaign in a new or "
                                "empty folder")
        existed = folder.exists()
        url = _code_url(code)
        import git

        if annex is None:
            annex = shutil.which("git-annex") is not None
        try:
            folder.mkdir(parents=True, exist_ok=True)
            repo = git.Repo.init(folder, initial_branch="main")
            with git_errors(f"cannot add {code} as the code submodule"):
                submodule(repo, "add", "--", url, CODE)
            with git_errors(f"{code}: the code repository has no commit"):
                git.Repo(folder / CODE).head.commit  # noqa: B018 (raises when empty)
            settings = Settings(id=uuid.uuid4().hex, large_threshold=threshold, large=large,
                                annex=annex)
            (folder / SETTINGS).write_text(settings.to_yaml())
            (folder / RUNS).mkdir()
            (folder / RUNS / ".gitkeep").touch()
            (folder / ".gitignore").write_text(GITIGNORE)
            if annex:
                with git_errors("git annex init failed"):
                    repo.git.annex("init", "--quiet", "expegit campaign")
            repo.git.add(SETTINGS, ".gitignore", f"{RUNS}/.gitkeep", ".gitmodules", CODE)
            repo.git.commit("-q", "-m", f"expegit: campaign around {code}")
        except ValueError as error:  # GitPython: "Reference at 'HEAD' does not exist"
            _remove(folder, keep_folder=existed)
            raise CampaignError(f"{code}: the code repository has no commit ({error})") from None
        except BaseException:
            _remove(folder, keep_folder=existed)
            raise
        return cls(folder)

    @classmethod
    def clone(cls, url: str, folder: Path | None = None) -> Campaign:
        """A working copy of the campaign at `url`, with its code submodule."""
        name = url.rstrip("/").rsplit("/", 1)[-1].removesuffix(".git") or "campaign"
        folder = (folder or Path(name)).resolve()
        if folder.exists() and any(folder.iterdir()):
            raise CampaignError(f"{folder}: exists and is not empty")
        existed = folder.exists()
        import git

        try:
            with git_errors(f"cannot clone {url}"):
                repo = git.Repo.clone_from(_code_url(url), folder)
            if not (folder / SETTINGS).is_file():
                raise CampaignError(f"{url}: not an expegit campaign (no {SETTINGS})")
            with git_errors("cannot fetch the code submodule"):
                submodule(repo, "update", "--init")
            if Settings.read(folder / SETTINGS).annex:
                if shutil.which("git-annex") is None:
                    raise CampaignError("this campaign stores large files with git-annex, "
                                        "which is not installed (Debian: apt-get install "
                                        "git-annex)")
                with git_errors("git annex init failed"):
                    repo.git.annex("init", "--quiet")
                # init probes origin with plain ssh and, when that needs options the user has
                # not configured yet (remote.origin.annex-ssh-options), marks it ignored for
                # good: leave the decision to the first get or sync instead
                repo.git.config("--unset", "remote.origin.annex-ignore",
                                with_exceptions=False)
        except BaseException:
            _remove(folder, keep_folder=existed)
            raise
        from expegit.catalog import warm

        warm(folder / RUNS)  # the first status reads no record file
        return cls(folder)

    # -- places ------------------------------------------------------------------------------

    @property
    def code(self) -> Path:
        return self.root / CODE

    @property
    def runs(self) -> Path:
        return self.root / RUNS

    @property
    def local(self) -> Path:
        """This clone's private state: journals, exported trees, the write lock, the cache
        of parsed records."""
        path = git_dir(self.root) / "expegit"
        path.mkdir(exist_ok=True)
        return path

    def code_repo(self) -> git.Repo:
        if not (self.code / ".git").exists():
            raise CampaignError(f"{self.code}: the code submodule is not checked out (run "
                                "`git submodule update --init`)")
        import git

        return git.Repo(self.code)

    # -- writing -----------------------------------------------------------------------------

    @contextlib.contextmanager
    def writing(self) -> Iterator[git.Repo]:
        """Hold this clone's write lock for git writes: an OS lock (gone with the process,
        whatever kills it) between processes, re-entrant within one."""
        with self._thread_lock:
            if self._depth == 0:
                self._handle = open(self.local / "write.lock", "a+")  # noqa: SIM115
                fcntl.flock(self._handle, fcntl.LOCK_EX)
            self._depth += 1
            try:
                yield self.repo
            finally:
                self._depth -= 1
                if self._depth == 0:
                    self._handle.close()

    def commit(self, paths: list[str], message: str, annexed: list[str] = ()) -> bool:
        """Stage `paths` (and `annexed` into git-annex) and commit only them, under the write
        lock; False when nothing changed."""
        with self.writing() as repo:
            with git_errors("cannot record in git"):
                if annexed:
                    repo.git.annex("add", "--force-large", "--quiet", "--", *annexed)
                if paths:
                    repo.git.add("-A", "--", *paths)
                staged = repo.git.diff("--cached", "--name-only", "--", *paths, *annexed)
                if not staged.strip():
                    return False
                repo.git.commit("-q", "--no-verify", "-m", message, "--", *paths, *annexed)
        return True


def git_dir(root: Path) -> Path:
    """The git directory of the work tree `root` (`.git`, or where a `.git` file points),
    found without starting git."""
    dot = root / ".git"
    if dot.is_file():
        text = dot.read_text().strip()
        if text.startswith("gitdir:"):
            return (root / text[len("gitdir:"):].strip()).resolve()
    return dot


def submodule(repo: git.Repo, *args: str) -> str:
    """`git submodule ...`, allowing a code repository given as a local path (git refuses
    the file transport for submodules unless told)."""
    return repo.git.execute(["git", "-c", "protocol.file.allow=always", "submodule", *args])


def _code_url(code: str) -> str:
    """A local path made absolute (a submodule's URL must not depend on where git runs)."""
    if "://" in code or (":" in code and not Path(code).exists()):
        return code
    path = Path(code).expanduser().resolve()
    if not path.exists():
        raise CampaignError(f"{code}: no such repository")
    return str(path)


def _remove(folder: Path, keep_folder: bool) -> None:
    if keep_folder:
        for child in folder.iterdir():
            shutil.rmtree(child) if child.is_dir() and not child.is_symlink() else child.unlink()
    else:
        shutil.rmtree(folder, ignore_errors=True)
