"""File helpers shared by every reader and writer: atomic files, atomic folders, hashes, safe
names, JSON-lines reading.

Every output of the package goes through :func:`atomic_write` (one file) or
:func:`atomic_folder` (a set of files that belong together, e.g. a sets folder or a report):
readers see the old version or the new one, never a mix, and a failure, SIGINT or SIGTERM
leaves no temporary file behind.  SIGTERM is turned into ``SystemExit`` by
:func:`exit_cleanly_on_sigterm` (every CLI calls it), so the ``except BaseException`` clean-up
below runs on ``kill`` as it does on Ctrl-C.

**Output folders are ours alone.**  A folder that a command replaces as a whole carries a
marker, ``.culnig-output.json``, listing the files the command wrote.  :func:`atomic_folder`
replaces a folder only when it does not exist, is empty, or holds nothing but the files its
marker lists (a folder written before markers existed: nothing but the writer's ``legacy``
file patterns); anything else -- a user's ``thesis.tex``, a ``README.md``, a sub-folder -- makes
it refuse with one line naming the folder (:class:`ForeignFilesError`), before anything is
written, and no ``--force`` changes that.  A sub-folder with its own marker (the output of
another command, e.g. ``culnig-experiment``'s ``sets/<selection>/random/``) is carried over into
the new folder, never deleted.  Commands that write *into* a folder (run folders: ``culnig-lape
record``/``demo``, ``culnig-finetune``, ``culnig-experiment``, ``culnig-score run --out``) only
ever replace their own file names in it, so files beside them survive.  Errors name the user's
path, never a temporary ``.staging`` / ``.tmp`` one.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import datetime as _dt
import errno
import fnmatch
import functools
import hashlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Sequence

# A name read from an input file (a culture, a set label) before it becomes part of a path.
_SAFE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,99}$")


class UnsafeNameError(ValueError):
    """A name from an input file would escape its folder or cannot be a plain file name."""


def safe_name(name, what: str = "name") -> str:
    """``name`` unchanged if it is a plain file name (letters, digits, ``_.-``; no ``..``)."""
    text = str(name)
    if not _SAFE_NAME.match(text) or ".." in text:
        raise UnsafeNameError(
            f"{what} {text!r} cannot be used as a file name (use letters, digits, '_', '-', '.'; "
            "no path separators, no '..', no '+')"
        )
    return text


def now_iso() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


def package_version() -> str:
    try:
        from importlib.metadata import version

        return version("culnig-lm-eval")
    except Exception:  # running from a source tree that is not installed
        return "0+unknown"


@functools.lru_cache(maxsize=1)
def code_version() -> dict:
    """The code that made an output: the package version and, in a git checkout, its commit (and
    whether files differed from it).  Recorded in every neuron set."""
    here = Path(__file__).resolve().parent
    version = {"package": package_version(), "commit": None, "modified": None}
    try:
        def git(*args):
            return subprocess.run(["git", "-C", str(here), *args], capture_output=True, text=True, timeout=10,
                                  check=True).stdout.strip()

        version["commit"] = git("rev-parse", "HEAD")
        version["modified"] = bool(git("status", "--porcelain", "--untracked-files=no", "--", str(here)))
    except (OSError, subprocess.SubprocessError):  # an installed wheel: no repository beside it
        pass
    return version


def file_sha256(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def json_lines(lines: Iterable[str], on_bad_line: Callable[[int, json.JSONDecodeError], None] | None = None
               ) -> Iterator[tuple[int, Any]]:
    """(line number, value) of every non-blank line of JSON-lines text (``lines``: an open file or
    a list of lines).  A line that is not JSON raises :class:`json.JSONDecodeError`, unless
    ``on_bad_line(line number, error)`` is given: it is called (it may raise) and the line skipped."""
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            value = json.loads(line)
        except json.JSONDecodeError as err:
            if on_bad_line is None:
                raise
            on_bad_line(number, err)
            continue
        yield number, value


def read_json_lines(path: str | Path, on_bad_line: Callable[[int, json.JSONDecodeError], None] | None = None
                    ) -> Iterator[tuple[int, Any]]:
    """:func:`json_lines` of the UTF-8 file ``path``, read line by line."""
    with open(path, encoding="utf-8") as fh:
        yield from json_lines(fh, on_bad_line)


def current_umask() -> int:
    """The process's file-creation mask (read without changing it for good)."""
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write(path: str | Path, write) -> Path:
    """Call ``write(tmp_path)`` then rename into place: readers never see a partial file.

    The temporary file sits next to ``path`` (same file system, so the rename is atomic) and is
    removed if ``write`` or the rename fails or the process is interrupted; the final file gets
    the usual umask permissions.
    """
    path = Path(path)
    if path.is_dir():
        raise IsADirectoryError(errno.EISDIR, "is a folder; give a file name", str(path))
    path.parent.mkdir(parents=True, exist_ok=True)
    with _naming(path.parent / f".{path.name}.", path):
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        with _naming(tmp, path):
            write(tmp)
            os.chmod(tmp, 0o666 & ~current_umask())
            os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def write_text(path: str | Path, text: str) -> Path:
    return atomic_write(path, lambda tmp: Path(tmp).write_text(text, encoding="utf-8"))


@contextlib.contextmanager
def signals_deferred():
    """Hold SIGINT/SIGTERM until the block ends (for the few renames that must go together)."""
    blocked = {signal.SIGINT, signal.SIGTERM}
    old = signal.pthread_sigmask(signal.SIG_BLOCK, blocked)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, old)


def _exchange(a: Path, b: Path) -> bool:
    """Swap two paths in one step (Linux ``renameat2(RENAME_EXCHANGE)``); False if unsupported."""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        renameat2 = libc.renameat2
    except (OSError, AttributeError):
        return False
    at_fdcwd, rename_exchange = -100, 2
    rc = renameat2(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), rename_exchange)
    return rc == 0


@contextlib.contextmanager
def _naming(temporary: str | Path, final: str | Path):
    """Errors raised in the block name ``final`` where they named the temporary path (a staging
    folder or a ``.tmp`` file is no path the user gave)."""
    try:
        yield
    except BaseException as err:
        _rename_in_error(err, str(temporary), str(final))
        raise


def _rename_in_error(err: BaseException, temporary: str, final: str) -> None:
    def fix(value):
        if not isinstance(value, str) or temporary not in value:
            return value
        start = value.index(temporary)
        rest = value[start + len(temporary):]
        # "PARENT/.name.XXXX.staging/x" -> "PARENT/name/x"; a prefix match may leave the random part
        if not rest.startswith(("/", os.sep)) and rest:
            rest = rest[next((i for i, ch in enumerate(rest) if ch in "/" + os.sep), len(rest)):]
        return value[:start] + final + rest

    if isinstance(err, OSError):
        for name in ("filename", "filename2"):
            value = getattr(err, name)
            if fix(value) is not value:  # set only what changes: a None filename2 must stay unset
                setattr(err, name, fix(value))
    if any(isinstance(a, str) and temporary in a for a in err.args):
        with contextlib.suppress(Exception):
            err.args = tuple(fix(a) for a in err.args)


# -- output folders: only ever replace our own --------------------------------------------------
MARKER = ".culnig-output.json"
MARKER_FORMAT = "culnig-output/1"
_command = "culnig_lm_eval"


def set_command_name(name: str) -> None:
    """The command recorded in the markers this process writes (the CLIs set it)."""
    global _command
    _command = name


class ForeignFilesError(ValueError):
    """An output folder that would be replaced holds files no culnig command wrote."""


def _marker_files(folder: Path) -> set[str] | None:
    """The relative paths a folder's marker lists; None without a readable marker."""
    try:
        body = json.loads((folder / MARKER).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    files = body.get("files") if isinstance(body, dict) and body.get("format") == MARKER_FORMAT else None
    return {f for f in files if isinstance(f, str)} if isinstance(files, list) else None


def _matches(relative: str, patterns: Sequence[str]) -> bool:
    """Segment-wise glob match: ``*.pt`` matches ``a.pt``, not ``paper/a.pt``."""
    parts = relative.split("/")
    return any(len(p.split("/")) == len(parts) and all(fnmatch.fnmatchcase(a, b) for a, b in zip(parts, p.split("/")))
               for p in patterns)


def _survey(folder: Path, legacy: Sequence[str] = ()) -> tuple[list[str], list[str]]:
    """(foreign entries, nested outputs) of ``folder``, as paths relative to it.

    Foreign: a file (or an empty folder, or a link) the marker does not list -- or, without a
    marker, one that matches none of the ``legacy`` patterns.  Nested outputs: sub-folders that
    carry a marker of their own (checked the same way; their foreign entries count as ours)."""
    listed = _marker_files(folder)
    foreign: list[str] = []
    nested: list[str] = []

    def owned(relative: str) -> bool:
        return relative in listed if listed is not None else _matches(relative, legacy)

    def walk(directory: Path, prefix: str) -> None:
        for entry in sorted(os.scandir(directory), key=lambda e: e.name):
            relative = prefix + entry.name
            if entry.is_dir(follow_symlinks=False):
                if (Path(entry.path) / MARKER).is_file():
                    inner, deeper = _survey(Path(entry.path))
                    foreign.extend(f"{relative}/{x}" for x in inner)
                    nested.append(relative)
                    nested.extend(f"{relative}/{x}" for x in deeper)
                elif not os.listdir(entry.path):
                    if not owned(relative + "/"):
                        foreign.append(relative + "/")  # an empty folder nobody listed
                else:
                    walk(Path(entry.path), relative + "/")
            elif not (relative == MARKER and not prefix) and not owned(relative):
                foreign.append(relative)

    walk(folder, "")
    return foreign, [n for n in nested if not any(n.startswith(m + "/") for m in nested)]  # outermost


def _top_level(entries: list[str]) -> list[str]:
    names = []
    for entry in entries:
        head, sep, _ = entry.partition("/")
        name = head + ("/" if sep else "")
        if name not in names:
            names.append(name)
    return names


def check_output_folder(target: str | Path, what: str = "output folder", legacy: Sequence[str] = (),
                        create_parent: bool = True) -> Path:
    """Fail early (before a model loads) when ``target`` cannot be replaced by this output.

    Allowed: a missing or empty folder, or one holding only what a culnig command wrote there
    (its marker; without one, files matching ``legacy``).  Otherwise :class:`ForeignFilesError`,
    one line naming ``what`` (the flag, e.g. ``--out``) and the folder.  The parent folder is
    created and checked for writing (unless ``create_parent`` is False: then nothing is created)."""
    target = Path(target)
    if target.is_symlink():
        raise ValueError(f"{what} {target} is a symbolic link; give the folder it points to, or a new folder")
    if target.exists() and not target.is_dir():
        raise NotADirectoryError(errno.ENOTDIR, f"exists and is not a folder; give a folder name as {what}",
                                 str(target))
    if target.is_dir():
        foreign, _ = _survey(target, legacy)
        if foreign:
            names = _top_level(foreign)
            shown = ", ".join(names[:3]) + (", ..." if len(names) > 3 else "")
            raise ForeignFilesError(
                f"{what} {target} holds files no culnig command wrote there ({shown}); this output replaces "
                "the folder as a whole, so move them away or give a new or empty folder (nothing was changed; "
                "--force does not override this)")
    if create_parent:
        check_writable_folder(target.parent if str(target.parent) else Path("."), what)
    return target


def _listing(folder: Path) -> list[str]:
    """Every file of ``folder`` (relative), and its empty folders with a trailing ``/``."""
    out = []
    for path in folder.rglob("*"):
        relative = path.relative_to(folder).as_posix()
        if path.is_symlink() or not path.is_dir():
            out.append(relative)
        elif not os.listdir(path):
            out.append(relative + "/")
    return sorted(out)


@contextlib.contextmanager
def atomic_folder(target: str | Path, what: str = "output folder", legacy: Sequence[str] = ()):
    """Build a folder beside ``target`` and swap it into place when the block succeeds.

    ``with atomic_folder(out) as staging: write files into staging`` -- readers of ``out`` see
    the previous folder or the complete new one: the swap is one ``renameat2`` exchange where
    the kernel has it, otherwise two renames with SIGINT/SIGTERM held.  On an error or an
    interruption the staging folder is removed and ``out`` is untouched.

    Only our own output is ever replaced (module docstring): ``target`` is checked with
    :func:`check_output_folder` before the block and again just before the swap; the new folder
    gets a marker listing its files; sub-folders holding another output's marker are moved into
    the new folder.  ``what`` names the folder in errors (a flag such as ``--out``); ``legacy``:
    the file patterns this writer produced before markers existed.
    """
    target = Path(target)
    check_output_folder(target, what, legacy)
    target.parent.mkdir(parents=True, exist_ok=True)
    with _naming(target.parent / f".{target.name}.", target):
        staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".staging", dir=target.parent))
    try:
        with _naming(staging, target):
            os.chmod(staging, 0o777 & ~current_umask())
            yield staging
            files = _listing(staging)
            marker = {"format": MARKER_FORMAT, "command": _command, "what": what, "written": now_iso(),
                      "files": files}
            (staging / MARKER).write_text(json.dumps(marker, indent=1) + "\n", encoding="utf-8")
        with signals_deferred():
            nested = _carry_nested(target, staging, what, legacy)
            old = None
            try:
                if target.exists() and _exchange(staging, target):
                    old = staging  # the exchange left the previous folder at the staging path
                else:
                    if target.exists():
                        old = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".old", dir=target.parent))
                        os.rmdir(old)
                        os.rename(target, old)
                    os.rename(staging, target)
            except BaseException:
                # the swap failed: the previous folder goes back in place, then the outputs carried out of it
                if old is not None and old != staging and old.exists() and not target.exists():
                    os.rename(old, target)
                for relative in nested:
                    with contextlib.suppress(OSError):
                        os.rename(staging / relative, target / relative)
                raise
            if old is not None:
                shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


def _carry_nested(target: Path, staging: Path, what: str, legacy: Sequence[str]) -> list[str]:
    """Check ``target`` once more (a file may have appeared while the output was built) and move
    the outputs nested in it into ``staging``; returns their relative paths."""
    if not target.is_dir():
        return []
    check_output_folder(target, what, legacy)
    _, nested = _survey(target, legacy)
    moved = []
    try:
        for relative in nested:
            if (staging / relative).exists():
                raise ForeignFilesError(
                    f"{what} {target}: {relative}/ is the output of another culnig command, and this output "
                    "writes the same path; move it away first (nothing was changed)")
            (staging / relative).parent.mkdir(parents=True, exist_ok=True)
            os.rename(target / relative, staging / relative)
            moved.append(relative)
    except BaseException:
        for relative in moved:
            with contextlib.suppress(OSError):
                os.rename(staging / relative, target / relative)
        raise
    return moved


def exit_cleanly_on_sigterm():
    """Make SIGTERM raise ``SystemExit(143)`` so clean-up handlers run as they do on Ctrl-C."""

    def handler(signum, _frame):
        raise SystemExit(128 + signum)

    with contextlib.suppress(ValueError):  # not the main thread: leave the default
        signal.signal(signal.SIGTERM, handler)


def check_writable_folder(folder: str | Path, what: str) -> Path:
    """Fail early (before a model loads) when ``folder`` cannot be created or written to.

    The folder's parents are created as needed; the probe file is removed again.
    """
    folder = Path(folder)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix=".write-test.", dir=folder)
        os.close(fd)
        os.unlink(probe)
    except OSError as err:
        raise ValueError(f"{what} {folder}: cannot write there ({err.strerror or err}); choose another folder") from None
    return folder
