"""Finding plan files for `planner validate`: the files named, and the `*.yaml` / `*.yml` files under the folders named.

- A file named explicitly is validated whatever its extension. Under a folder, a name ending in `.yaml` or `.yml`
  in any case (`.YAML`) is a plan file.
- Under a folder, hidden entries (`.git`, `.venv`, `.tox`, `.pre-commit-config.yaml`), the folders in SKIPPED_DIRS
  (`venv`, `node_modules`, `__pycache__`, `site-packages`, ...) and any folder holding one of VENV_MARKERS
  (`pyvenv.cfg`, `conda-meta`) are skipped. A folder named explicitly is searched even when it is one of them.
- `--exclude GLOB` (repeatable; fnmatch, case-sensitive, `*` also matches `/`) is matched against an entry's name,
  its path relative to the folder given and its path as printed; a trailing `/` matches folders only, a leading
  `/` matches the relative path only, `**/x` also matches `x`. It applies to files named explicitly too (pre-commit
  passes files one by one), never to a folder named explicitly.
- A file is reported once however often it is named (it is identified by its device and inode, so a symlink or
  a second spelling of the same path is the same file), under the path it was first named by.
- Symlinked folders are followed, each folder at most once: a symlink loop is never walked.
- An entry that cannot be read is a PLN000 problem, never skipped in silence: a folder without permission, a
  dangling symlink or a symlink loop named like a plan, a FIFO or device named like a plan.
- A folder holding no plan file is a PLN000 problem too (exit 1): a mistyped path must not pass CI.
- A path that does not exist is returned in `Found.missing`: the CLI makes it a usage error (exit 2).
"""

from __future__ import annotations

import errno
import os
import stat
from dataclasses import dataclass
from fnmatch import fnmatchcase
from pathlib import Path

from planner.plan import Problem
from planner.rules import PLN000

EXTENSIONS = (".yaml", ".yml")
SKIPPED_DIRS = frozenset({"venv", "node_modules", "__pycache__", "site-packages", "dist-packages", "__pypackages__",
                          "bower_components"})
VENV_MARKERS = ("pyvenv.cfg", "conda-meta")


@dataclass(frozen=True)
class Entry:
    """A path to report: a plan file to check, or (with `problem` set) an entry that could not be read."""

    path: str
    problem: Problem | None = None


@dataclass(frozen=True)
class Found:
    """Everything to report, in order (each folder's finds sorted by path), and the paths that do not exist."""

    entries: tuple[Entry, ...]
    missing: tuple[str, ...]


def discover(paths: list[str], exclude: list[str] | tuple[str, ...] = ()) -> Found:
    """The plan files and unreadable entries named by `paths` (files and folders), `exclude` globs left out."""
    finder = _Finder([_Glob(text) for text in exclude])
    missing = [raw for raw in paths if not finder.add(raw)]
    return Found(tuple(finder.entries.values()), tuple(missing))


def unreadable(path: str, message: str, fix: str = "") -> Problem:
    """The PLN000 problem of an entry that cannot be read (no place in a file: line and column 0)."""
    return PLN000.problem(path, message, fix or None)


class _Glob:
    """One `--exclude` pattern, gitignore-ish."""

    def __init__(self, text: str):
        text = text.replace(os.sep, "/")
        self.folders_only = text.endswith("/")
        text = text.rstrip("/")
        self.anchored = text.startswith("/")
        text = text.lstrip("/")
        while text.startswith("./"):
            text = text[2:]
        self.globs = (text, text[3:]) if text.startswith("**/") else (text,)

    def matches(self, name: str, relative: str, shown: str, folder: bool) -> bool:
        if self.folders_only and not folder:
            return False
        candidates = (relative,) if self.anchored else (name, relative, shown)
        return any(fnmatchcase(candidate, glob) for candidate in candidates for glob in self.globs)


class _Finder:
    def __init__(self, globs: list[_Glob]):
        self.globs = globs
        self.entries: dict[object, Entry] = {}  # identity -> entry, in the order first found
        self.walked: set[tuple[int, int]] = set()  # (device, inode) of every folder searched from the current root

    def add(self, raw: str) -> bool:
        """Add what `raw` names; False when it does not exist."""
        try:
            info = os.stat(raw)
        except ValueError:  # a NUL in the path: it cannot exist
            return False
        except OSError as exc:
            if exc.errno in (errno.ENOENT, errno.ENOTDIR) and not os.path.lexists(raw):
                return False
            self._keep(_problem_key(raw), Entry(raw, unreadable(raw, _reason(exc, raw))))
            return True
        if stat.S_ISDIR(info.st_mode):
            self._folder(raw, info)
        elif not self._excluded(os.path.basename(raw), _posix(raw), _posix(raw), folder=False):
            self._file(raw, info)
        return True

    def _keep(self, key: object, entry: Entry) -> None:
        self.entries.setdefault(key, entry)

    def _file(self, path: str, info: os.stat_result) -> None:
        if stat.S_ISREG(info.st_mode):
            self._keep((info.st_dev, info.st_ino), Entry(path))
        else:
            reason = f"{_kind(info.st_mode)}, not a regular file"
            self._keep(_problem_key(path), Entry(path, unreadable(path, reason, "name a plan file")))

    def _folder(self, root: str, info: os.stat_result) -> None:
        """Search the folder `root` named on the command line; a PLN000 problem when it holds no plan file.
        Each root is searched on its own (a folder named twice is searched twice, its files reported once), so
        that a folder named explicitly is judged by what it holds."""
        self.walked = {(info.st_dev, info.st_ino)}
        finds: list[tuple[tuple[str, ...], object, Entry]] = []
        skipped = self._walk(root, finds)
        for _, key, entry in sorted(finds, key=lambda find: find[0]):
            self._keep(key, entry)
        if not finds:
            detail = f"; skipped: {', '.join(skipped)}" if skipped else ""
            message = f"no plan file (*.yaml or *.yml) in this folder{detail}"
            fix = "check the path, or name the plan files explicitly (any extension is then accepted)"
            self._keep(_problem_key(root), Entry(root, unreadable(root, message, fix)))

    def _walk(self, root: str, finds: list) -> list[str]:
        """Append (relative parts, identity, entry) for every plan file and unreadable entry under `root`;
        return what was skipped, as words for the message of a folder without plan files."""
        skipped: dict[str, int] = {}
        stack: list[tuple[str, tuple[str, ...]]] = [(root, ())]
        while stack:  # iterative: a deep tree must not exhaust the recursion limit
            folder, parts = stack.pop()
            try:
                with os.scandir(folder) as scan:
                    children = sorted(scan, key=lambda child: child.name)
            except OSError as exc:
                problem = unreadable(folder, _reason(exc, folder, "this folder"))
                finds.append((parts, _problem_key(folder), Entry(folder, problem)))
                continue
            for child in children:
                found = self._child(child, parts, stack)
                if isinstance(found, str):
                    skipped[found] = skipped.get(found, 0) + 1
                elif found is not None:
                    finds.append(found)
        return [f"{count} {why}" for why, count in skipped.items()]

    def _child(self, child: os.DirEntry, parts: tuple[str, ...], stack: list):
        """What one folder entry gives: a find, a folder pushed on `stack` (None), nothing (None), or the word
        for why it was skipped."""
        name = child.name
        path = str(Path(child.path))
        relative = "/".join(parts + (name,))
        if name.startswith("."):
            return "hidden"
        try:
            is_folder = child.is_dir()
        except OSError:  # a symlink loop: not known to be a folder; reported below if named like a plan
            is_folder = False
        if is_folder:
            if name in SKIPPED_DIRS or any(os.path.lexists(os.path.join(path, m)) for m in VENV_MARKERS):
                return "virtual environment or cache"
            if self._excluded(name, relative, _posix(path), folder=True):
                return "excluded"
            try:
                entered = self._enter(child.stat())
            except OSError as exc:
                return parts + (name,), _problem_key(path), Entry(path, unreadable(path, _reason(exc, path)))
            if entered:
                stack.append((path, parts + (name,)))
            return None
        if not name.lower().endswith(EXTENSIONS):
            return None
        if self._excluded(name, relative, _posix(path), folder=False):
            return "excluded"
        return parts + (name,), *self._identify(path)

    def _identify(self, path: str) -> tuple[object, Entry]:
        try:
            info = os.stat(path)
        except OSError as exc:
            return _problem_key(path), Entry(path, unreadable(path, _reason(exc, path)))
        if stat.S_ISREG(info.st_mode):
            return (info.st_dev, info.st_ino), Entry(path)
        reason = f"{_kind(info.st_mode)}, not a regular file"
        return _problem_key(path), Entry(path, unreadable(path, reason, "remove it, or leave it out with --exclude"))

    def _enter(self, info: os.stat_result) -> bool:
        key = (info.st_dev, info.st_ino)
        if key in self.walked:
            return False
        self.walked.add(key)
        return True

    def _excluded(self, name: str, relative: str, shown: str, folder: bool) -> bool:
        return any(glob.matches(name, relative, shown, folder) for glob in self.globs)


def _problem_key(path: str) -> tuple[str, str]:
    return ("unreadable", os.path.realpath(path))


def _posix(path: str) -> str:
    return Path(path).as_posix()


def _reason(exc: OSError, path: str, what: str = "it") -> str:
    """Why `path` cannot be read, in words (`what` names it: "it", "this folder")."""
    if exc.errno == errno.ELOOP:
        return f"cannot read {what}: a symbolic link loop"
    if exc.errno == errno.ENOENT and os.path.islink(path):
        try:
            target = f" to {os.readlink(path)!r}"
        except OSError:
            target = ""
        return f"cannot read {what}: a dangling symbolic link{target}"
    if isinstance(exc, PermissionError):
        return f"cannot read {what}: permission denied"
    return f"cannot read {what}: {exc.strerror or exc}"


def _kind(mode: int) -> str:
    for test, word in ((stat.S_ISFIFO, "a FIFO"), (stat.S_ISSOCK, "a socket"), (stat.S_ISCHR, "a character device"),
                       (stat.S_ISBLK, "a block device")):
        if test(mode):
            return word
    return "not a file"  # a folder named like a plan is searched, never reported
