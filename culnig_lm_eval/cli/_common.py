"""What every ``culnig-*`` command shares: one-line errors with exit status 2, clean signals.

A user's mistake (a bad argument, a missing or malformed file, a full disk) is reported as
one line ``PROG: error: ...`` naming the file or argument, with exit status 2 and no
traceback; Ctrl-C and SIGTERM exit quietly (130 / 143) after the writers' clean-up has run.

Output folders (``--out``, ``--sets-out``): a folder a command replaces as a whole must be new,
empty or that command's earlier output; one holding anything else is refused (exit 2) and left
as it is, ``--force`` or not.  Folders a command writes into keep every file it did not write.
:data:`OUTPUT_FOLDERS` is the sentence the commands' ``--help`` shows.

Flags are spelled as ``docs/cli.md`` lists them (``tests/test_cli_table.py``); a renamed flag's
old spelling stays for one release through :func:`old_spellings`, hidden from ``--help``.
"""

from __future__ import annotations

import argparse
import errno
import logging
import sys
import textwrap

from .._io import exit_cleanly_on_sigterm, set_command_name

OUTPUT_FOLDERS = ("Output folders: one that is replaced as a whole (marked 'replaced') must be new, empty or an "
                  "earlier output of a culnig command; a folder holding anything else is refused with exit status 2 "
                  "and left untouched (--force does not change this). Run folders are written into: files there "
                  "that the command did not write are kept.")


class HelpFormatter(argparse.HelpFormatter):
    """Defaults shown where there is one to show; in descriptions and epilogs, lines indented by
    two spaces (examples) are kept as written and the other lines of a paragraph are wrapped."""

    def _get_help_string(self, action):
        text = action.help or ""
        default = action.default
        shown = not (default is None or default is False or default is argparse.SUPPRESS or default in ([], ""))
        if action.option_strings and "default" not in text and shown and action.nargs != 0:
            text += " (default: %(default)s)"
        return text

    def _fill_text(self, text, width, indent):
        blocks = []
        for paragraph in textwrap.dedent(text).strip("\n").split("\n\n"):
            lines, prose = [], []
            for line in paragraph.splitlines() + [None]:
                if line is None or line.startswith("  "):
                    if prose:
                        lines.append(textwrap.fill(" ".join(prose), width, initial_indent=indent,
                                                   subsequent_indent=indent))
                        prose = []
                    if line is not None:
                        lines.append(indent + line)
                else:
                    prose.append(line.strip())
            blocks.append("\n".join(lines))
        return "\n\n".join(blocks)


def epilog(*examples: str, folders: bool = True) -> str:
    """The end of a (sub)command's ``--help``: its example lines, then the output-folder rule."""
    text = "example" + ("s" if len(examples) > 1 else "") + ":\n" + "\n".join(f"  {e}" for e in examples)
    return text + ("\n\n" + OUTPUT_FOLDERS if folders else "")


def old_spellings(parser, action: argparse.Action, *old: str) -> argparse.Action:
    """Let ``action`` also be reached by its ``old`` option strings, hidden from ``--help``.

    An old spelling parses into the same ``dest`` through the same action (so ``required`` and
    mutually exclusive groups see it), and prints one line naming the new spelling.  ``parser``
    is the parser or argument group ``action`` was added to.
    """
    for option in old:
        if option in parser._option_string_actions:
            raise ValueError(f"old spelling {option} is already an option")
        parser._option_string_actions[option] = action  # not in action.option_strings: not in --help
    action.old_option_strings = tuple(old)
    if not getattr(type(action), "_notes_old_spellings", False):
        action.__class__ = _noting(type(action))
    return action


_NOTING: dict[type, type] = {}


def _noting(cls: type) -> type:
    if cls not in _NOTING:
        def __call__(self, parser, namespace, values, option_string=None):
            if option_string in getattr(self, "old_option_strings", ()):
                print(f"{parser.prog}: note: {option_string} is now spelled {self.option_strings[0]} "
                      f"(the old spelling goes in the next release)", file=sys.stderr)
            return cls.__call__(self, parser, namespace, values, option_string)

        _NOTING[cls] = type(cls.__name__, (cls,), {"__call__": __call__, "_notes_old_spellings": True})
    return _NOTING[cls]


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
