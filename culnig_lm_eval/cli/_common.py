"""What every ``culnig-*`` command shares: one-line errors with exit status 2, clean signals.

A user's mistake (a bad argument, a missing or malformed file, a full disk) is reported as
one line ``PROG: error: ...`` naming the file or argument, with exit status 2 and no
traceback; Ctrl-C and SIGTERM exit quietly (130 / 143) after the writers' clean-up has run.

Output folders (``--out``, ``--sets-out``): a folder a command replaces as a whole must be new,
empty or that command's earlier output; one holding anything else is refused (exit 2) and left
as it is, ``--force`` or not.  Folders a command writes into keep every file it did not write.
:data:`OUTPUT_FOLDERS` is the sentence the commands' ``--help`` shows.
"""

from __future__ import annotations

import errno
import logging
import sys

from .._io import exit_cleanly_on_sigterm, set_command_name

OUTPUT_FOLDERS = ("Output folders: one that is replaced as a whole (marked 'replaced') must be new, empty or an "
                  "earlier output of a culnig command; a folder holding anything else is refused with exit status 2 "
                  "and left untouched (--force does not change this). Run folders are written into: files there "
                  "that the command did not write are kept.")


def one_line(err: BaseException) -> str:
    if isinstance(err, OSError) and err.strerror:
        where = f"{err.filename}: " if err.filename else ""
        advice = " (free some space or choose another folder)" if err.errno == errno.ENOSPC else ""
        return f"{where}{err.strerror}{advice}"
    return " ".join(str(err).split()) or type(err).__name__


def run(prog: str, call, *args) -> int:
    """``call(*args)`` with the CLI conventions; returns the process exit status."""
    logging.basicConfig(level=logging.WARNING, format="%(name)s: %(message)s")
    exit_cleanly_on_sigterm()
    command = getattr(args[0], "command", None) if args else None
    set_command_name(f"{prog} {command}" if isinstance(command, str) else prog)
    try:
        result = call(*args)
    except KeyboardInterrupt:
        print(f"{prog}: interrupted", file=sys.stderr)
        return 130
    except (ValueError, LookupError, OSError) as err:  # every user-facing error class derives from these
        print(f"{prog}: error: {one_line(err)}", file=sys.stderr)
        return 2
    return result if isinstance(result, int) else 0
