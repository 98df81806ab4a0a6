"""File helpers shared by every reader and writer: atomic files, atomic folders, hashes, safe
names, JSON-lines reading.

Every output of the package goes through :func:`atomic_write` (one file) or
:func:`atomic_folder` (a set of files that belong together, e.g. a sets folder or a report):
readers see the old version or the new one, never a mix, and a failure, SIGINT or SIGTERM
leaves no temporary file behind.  SIGTERM is turned into ``SystemExit`` by
:func:`exit_cleanly_on_sigterm` (every CLI calls it), so the ``except BaseException`` clean-up
below runs on ``kill`` as it does on Ctrl-C.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import datetime as _dt
import hashlib
import json
import os
import re
import shutil
import signal
import tempfile
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator

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
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
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
def atomic_folder(target: str | Path):
    """Build a folder beside ``target`` and swap it into place when the block succeeds.

    ``with atomic_folder(out) as staging: write files into staging`` -- readers of ``out`` see
    the previous folder or the complete new one: the swap is one ``renameat2`` exchange where
    the kernel has it, otherwise two renames with SIGINT/SIGTERM held.  On an error or an
    interruption the staging folder is removed and ``out`` is untouched.
    """
    target = Path(target)
    if target.exists() and not target.is_dir():
        raise NotADirectoryError(f"{target} exists and is not a folder")
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".staging", dir=target.parent))
    try:
        os.chmod(staging, 0o777 & ~current_umask())
        yield staging
        with signals_deferred():
            if target.exists() and _exchange(staging, target):
                old = staging  # the exchange left the previous folder at the staging path
            else:
                old = None
                if target.exists():
                    old = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".old", dir=target.parent))
                    os.rmdir(old)
                    os.rename(target, old)
                os.rename(staging, target)
            if old is not None:
                shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


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
