"""Every console script follows the flag table of ``docs/cli.md`` (issue 24: one spelling per concept).

The scripts are read from ``pyproject.toml`` (``[project.scripts]``) and their parsers built
in-process (``main`` -> ``build_parser``, ``X_main`` -> ``X_parser``), so a new script or flag is
checked without listing it here.  From ``docs/cli.md``:

* every (sub)command has a section (``### `culnig-score run` ``) whose tables list exactly the
  flags its ``--help`` shows;
* every row of "Shared flags" names exactly the commands whose ``--help`` shows that spelling;
* every row of "Old spellings" is accepted by the commands it names, hidden from their ``--help``,
  parses to what the new spelling parses to, and prints one note; no hidden option string is
  left out of that table, and an old spelling that is not also a current one elsewhere is
  shown by no command.

And by rule: a flag with an underscore is one of lm-eval's own (checked against lm-eval's
parser), no two shown spellings differ only in ``-`` versus ``_`` (so ``--batch-size`` cannot
come back beside ``--batch_size``), and every ``--help`` ends with example lines that parse.
"""

from __future__ import annotations

import argparse
import importlib
import re
import shlex
import tomllib

import pytest

from conftest import REPO

CLI_MD = REPO / "docs" / "cli.md"


# -- the parsers ---------------------------------------------------------------------------------
def console_scripts() -> dict[str, str]:
    return tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["scripts"]


def build(target: str) -> argparse.ArgumentParser:
    """The parser behind ``module:main`` (``build_parser``) or ``module:X_main`` (``X_parser``)."""
    module, func = target.split(":")
    name = "build_parser" if func == "main" else func.removesuffix("_main") + "_parser"
    factory = getattr(importlib.import_module(module), name, None)
    assert factory is not None, f"{target}: give its module a {name}() so that its flags can be checked"
    return factory()


def subparsers(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    actions = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    return dict(actions[0].choices) if actions else {}


def all_commands() -> dict[str, argparse.ArgumentParser]:
    """'culnig-score run' / 'culnig-report' -> its parser."""
    found = {}
    for script, target in console_scripts().items():
        parser = build(target)
        subs = subparsers(parser)
        found.update({f"{script} {name}": p for name, p in subs.items()} if subs else {script: parser})
    return found


COMMANDS = all_commands()


def shown(parser) -> dict[str, argparse.Action]:
    """Option strings ``--help`` shows -> action."""
    return {s: a for a in parser._actions if a.option_strings and a.help is not argparse.SUPPRESS
            and not isinstance(a, argparse._HelpAction) for s in a.option_strings}


def hidden(parser) -> dict[str, argparse.Action]:
    """Option strings the parser accepts that ``--help`` does not show -> action."""
    visible = shown(parser)
    return {s: a for s, a in parser._option_string_actions.items()
            if s not in visible and not isinstance(a, argparse._HelpAction)}


# -- docs/cli.md -----------------------------------------------------------------------------------
def section(text: str, title: str) -> str:
    match = re.search(rf"^## {re.escape(title)}\n(.*?)(?=^## |\Z)", text, flags=re.S | re.M)
    assert match, f"docs/cli.md has no '## {title}' section"
    return match.group(1)


def table_rows(text: str) -> list[list[str]]:
    rows = []
    for line in text.splitlines():
        if line.startswith("|") and not re.match(r"^\|[\s\-|:]+\|$", line):
            rows.append([cell.strip() for cell in line.strip().strip("|").split("|")])
    return rows[1:] if rows else rows  # without the header


def flags_in(cell: str) -> list[str]:
    """The flags of a table cell: each backticked item's first word that starts with '-'."""
    return [item.split()[0] for item in re.findall(r"`([^`]+)`", cell) if item.startswith("-")]


def command_names(cell: str) -> set[str]:
    return {f"culnig-{name.strip()}" for name in cell.split(",") if name.strip()}


DOC = CLI_MD.read_text()


def command_sections() -> dict[str, set[str]]:
    """'culnig-score run' -> the flags in its section's tables."""
    found = {}
    for match in re.finditer(r"^### `(culnig-[a-z]+(?: [a-z-]+)?)`\n(.*?)(?=^##|\Z)", DOC, flags=re.S | re.M):
        found[match.group(1)] = {f for row in table_rows(match.group(2)) for f in flags_in(row[0])}
    return found


def shared_rows() -> list[tuple[list[str], set[str]]]:
    return [(flags_in(row[1]), command_names(row[3])) for row in table_rows(section(DOC, "Shared flags"))]


def old_rows() -> list[tuple[list[str], list[str], set[str]]]:
    return [(flags_in(row[0]), flags_in(row[1]), command_names(row[2]))
            for row in table_rows(section(DOC, "Old spellings"))]


# -- the table against the parsers -------------------------------------------------------------------
def test_every_command_has_a_section_listing_exactly_its_flags():
    sections = command_sections()
    assert set(sections) == set(COMMANDS), "docs/cli.md needs one '### `command`' section per (sub)command"
    for name, parser in COMMANDS.items():
        flags = set(shown(parser))
        assert sections[name] == flags, (f"{name}: --help shows {sorted(flags - sections[name])} not listed in "
                                         f"docs/cli.md; listed but not shown: {sorted(sections[name] - flags)}")


def test_every_shared_spelling_is_where_the_table_says():
    rows = shared_rows()
    assert len(rows) > 10
    for flags, commands in rows:
        assert flags and commands <= set(COMMANDS), (flags, commands - set(COMMANDS))
        for flag in flags:
            having = {name for name, parser in COMMANDS.items() if flag in shown(parser)}
            assert having == commands, (f"{flag}: docs/cli.md lists {sorted(commands - having)} that lack it"
                                        f" and leaves out {sorted(having - commands)}")


def lm_eval_flags() -> set[str]:
    from lm_eval._cli import HarnessCLI

    run = HarnessCLI()._subparsers.choices["run"]
    return set(run._option_string_actions)


def test_underscores_only_in_lm_evals_own_flags():
    ours = {flag for parser in COMMANDS.values() for flag in shown(parser)}
    lm_eval = lm_eval_flags()
    with_underscore = {flag for flag in ours if "_" in flag}
    assert with_underscore <= lm_eval, f"not lm-eval flags, so spell them with hyphens: {sorted(with_underscore - lm_eval)}"
    assert {"--model_args", "--tasks", "--batch_size", "--limit", "--device"} <= ours


def spelling_clashes(commands: dict[str, argparse.ArgumentParser]) -> list[str]:
    """Shown flags that differ from another shown flag only in '-' versus '_'."""
    seen: dict[str, tuple[str, str]] = {}
    clashes = []
    for name, parser in commands.items():
        for flag in shown(parser):
            other = seen.setdefault(flag.lstrip("-").replace("_", "-"), (flag, name))
            if other[0] != flag:
                clashes.append(f"{name} spells {flag}, {other[1]} {other[0]}")
    return clashes


def test_no_two_spellings_of_one_name():
    assert spelling_clashes(COMMANDS) == []


def test_adding_batch_size_with_a_hyphen_again_fails():
    parser = build(console_scripts()["culnig-finetune"])
    train = subparsers(parser)["train"]
    train.add_argument("--eval-batch_size")  # neither spelling of a name twice...
    train.add_argument("--batch-size-x")
    assert spelling_clashes({**COMMANDS, "culnig-finetune train": train}) == [
        "culnig-finetune train spells --eval-batch_size, culnig-finetune train --eval-batch-size"]
    with pytest.raises(argparse.ArgumentError):  # ...and the old spelling is taken: it still works
        train.add_argument("--batch-size")
    score_run = subparsers(build(console_scripts()["culnig-score"]))["run"]
    score_run.add_argument("--batch-size", dest="bs")
    assert spelling_clashes({**COMMANDS, "culnig-score run": score_run}) == [
        "culnig-score run spells --batch-size, culnig-score run --batch_size"]


# -- old spellings -----------------------------------------------------------------------------------
def value_for(action: argparse.Action) -> list[str]:
    if action.nargs == 0:
        return []
    if action.choices:
        return [str(sorted(action.choices)[0])]
    if action.type in (int, float):
        return ["1"]
    return ["v1"]


def base_argv(parser, skip: argparse.Action | None = None) -> list[str]:
    """Values for every required argument of ``parser`` but ``skip``."""
    argv = []
    for action in parser._actions:
        if action is skip or isinstance(action, (argparse._HelpAction, argparse._SubParsersAction)):
            continue
        if action.option_strings and action.required:
            argv += [action.option_strings[0], *value_for(action)]
        elif not action.option_strings and action.nargs != 0:
            argv += value_for(action)
    return argv


def parse(name: str, argv: list[str]) -> dict:
    parser = build(console_scripts()[name.split()[0]])
    sub = name.split()[1:]
    return {k: v for k, v in vars(parser.parse_args(sub + argv)).items() if not callable(v)}  # func: per parser


OLD = [(name, old, new) for olds, news, commands in old_rows() for name in sorted(commands) for old in olds
       for new in (news[:1] or [None])]


def test_the_old_spellings_table_lists_every_hidden_option():
    listed = {(name, old) for name, old, _ in OLD}
    for name, parser in COMMANDS.items():
        for flag in hidden(parser):
            assert (name, flag) in listed, f"{name} accepts {flag} without --help showing it: list it under Old spellings"
    current = {f for parser in COMMANDS.values() for f in shown(parser)}
    for name, old, _ in OLD:
        if old not in current:  # an old spelling that is no command's current one comes back nowhere
            assert all(old not in shown(p) for p in COMMANDS.values()), old


@pytest.mark.parametrize("name, old, new", OLD, ids=[f"{n}:{o}" for n, o, _ in OLD])
def test_an_old_spelling_does_what_the_new_one_does(name, old, new, capsys):
    parser = COMMANDS[name]
    assert old in parser._option_string_actions and old not in shown(parser), f"{name}: {old} must work, hidden"
    action = parser._option_string_actions[old]
    if new is None:  # a flag that only restated the default
        assert parse(name, base_argv(parser) + [old]) == parse(name, base_argv(parser))
        return
    assert new in shown(parser) and shown(parser)[new] is action, f"{name}: {old} is not {new}"
    base, value = base_argv(parser, skip=action), value_for(action)
    capsys.readouterr()
    assert parse(name, base + [old, *value]) == parse(name, base + [new, *value])
    notes = capsys.readouterr().err.splitlines()
    assert notes == [f"{parser.prog}: note: {old} is now spelled {new} (the old spelling goes in the next release)"]


# -- --help ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", sorted(COMMANDS))
def test_help_ends_with_example_lines_that_parse(name):
    parser = COMMANDS[name]
    text = parser.format_help()
    match = re.search(r"^examples?:\n((?:  .*\n?)+)", text, flags=re.M)
    assert match, f"{name}: --help shows no example"
    for line in match.group(1).splitlines():
        words = shlex.split(line)
        if words[0] == "lm_eval":
            continue
        assert " ".join(words[: len(name.split())]) == name, line
        parse(name, [w.replace("$(", "").replace(")", "") for w in words[len(name.split()):]])
    if len(shown(parser)) > 12:  # a long list is grouped
        groups = [g for g in parser._action_groups if g._group_actions and g.title not in ("options",
                                                                                             "positional arguments")]
        assert len(groups) >= 3, f"{name}: {len(shown(parser))} flags in {len(groups)} groups"
