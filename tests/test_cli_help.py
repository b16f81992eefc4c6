"""Every command's --help, walked over the real command tree (issue 14, CLI polish).

No value placeholder on a flag (Typer 0.29 printed `<bool>`), argument names in upper case
in every usage line, value options named, and the main commands show examples that use only
options the command has.
"""

from __future__ import annotations

import re
import shlex
from collections.abc import Iterator
from typing import Any

import pytest

from atendeai_ctl.cli.app import _built, command
from tests.cli_helpers import run_main

MAIN_COMMANDS = [
    "up",
    "down",
    "status",
    "migrate up",
    "migrate rollback",
    "clinic create",
    "user create",
    "token verify",
]
HELP_ENV = {"COLUMNS": "200", "NO_COLOR": "1", "TERM": "dumb"}
PLACEHOLDER = re.compile(r"<[a-z][a-z ]*>")
UPPER_ARGUMENT = re.compile(r"^[\[{]?[A-Z][A-Z0-9_:|-]*[\]}]?(\.\.\.)?$")


def walk(cmd: Any, path: tuple[str, ...] = ()) -> Iterator[tuple[tuple[str, ...], Any]]:
    yield path, cmd
    for name, sub in sorted(getattr(cmd, "commands", {}).items()):
        yield from walk(sub, (*path, name))


COMMANDS = dict(walk(command()))


def help_text(path: tuple[str, ...]) -> str:
    ran = run_main([*path, "--help"], env=HELP_ENV)
    assert ran.code == 0, ran.stderr
    return ran.stdout


def test_the_walk_reaches_every_group_and_command() -> None:
    assert {"clinic", "user", "token", "audit", "migrate", "db", "auth", "config"} <= {
        path[0] for path in COMMANDS if path
    }
    assert len(COMMANDS) > 35


@pytest.mark.parametrize("path", sorted(COMMANDS), ids=lambda p: " ".join(p) or "atendeai")
def test_help_has_no_flag_placeholder_and_upper_case_arguments(path: tuple[str, ...]) -> None:
    text = help_text(path)
    assert "<bool>" not in text
    option_lines = [line for line in text.splitlines() if re.search(r"(^|\s)--?[a-z]", line)]
    for line in option_lines:
        if re.search(r"^\W*\*?\s*--?[a-z]", line.strip("│ ")):  # an option's own row
            assert not PLACEHOLDER.search(line), line
    usage = next(line for line in text.splitlines() if "Usage:" in line)
    words = usage.split("Usage:", 1)[1].split()
    after_options = words[words.index("[OPTIONS]") + 1 :] if "[OPTIONS]" in words else []
    for word in after_options:
        assert UPPER_ARGUMENT.match(word), (usage, word)


@pytest.mark.parametrize("path", sorted(COMMANDS), ids=lambda p: " ".join(p) or "atendeai")
def test_every_argument_and_value_option_has_an_upper_case_name(path: tuple[str, ...]) -> None:
    """The source of the usage lines and of the help rows: the tree itself."""
    cmd = COMMANDS[path]
    for param in cmd.params:
        if param.param_type_name == "option" and (param.is_flag or param.count):
            continue
        metavar = param.metavar or ""
        assert re.fullmatch(r"[A-Z][A-Z0-9_:|-]*|[a-z]+(\|[a-z]+)+", metavar), (path, param.name)


@pytest.mark.parametrize("name", MAIN_COMMANDS)
def test_main_commands_show_examples_that_parse(name: str) -> None:
    path = tuple(name.split())
    text = help_text(path)
    assert "Examples:" in text
    examples = [line.strip(" │") for line in text.split("Examples:", 1)[1].splitlines()]
    examples = [line for line in examples if line.startswith("atendeai ")]
    assert examples, text
    opts = {o for p in COMMANDS[path].params for o in (*p.opts, *p.secondary_opts)}
    for example in examples:
        words = list(shlex.shlex(example, posix=True, punctuation_chars=True))
        words = words[: next((i for i, w in enumerate(words) if w in "|<>;&"), len(words))]
        assert tuple(words[1 : 1 + len(path)]) == path, example
        for word in words[1 + len(path) :]:
            if word.startswith("-") and word != "-":
                assert word.split("=")[0] in opts, (example, word)


def test_usage_errors_name_arguments_in_upper_case() -> None:
    ran = run_main(["logs"], env=HELP_ENV)
    assert ran.code == 2
    assert "SERVICE" in ran.stderr and "'service'" not in ran.stderr


def test_no_typer_app_would_print_locals_in_a_crash_report() -> None:
    """Locals of a failing frame can hold database URLs and passwords."""
    from atendeai_ctl.cli.app import app

    apps = [app, *(group.typer_instance for group in app.registered_groups)]
    assert len(apps) > 5
    for each in apps:
        assert each.pretty_exceptions_show_locals is False, each.info.name
    assert app.pretty_exceptions_enable is False  # main() prints one line, or a plain traceback


def describe(cmd: Any) -> Any:
    """What a user sees of a command: its help, epilog and every parameter, recursively."""
    params = [
        (
            p.name,
            p.opts,
            p.secondary_opts,
            p.metavar,
            getattr(p, "help", None),
            p.required,
            p.default,
        )
        for p in cmd.params
    ]
    subs = {name: describe(sub) for name, sub in getattr(cmd, "commands", {}).items()}
    return (type(cmd).__name__, cmd.help, cmd.epilog, params, subs)


def test_a_command_built_alone_is_the_same_as_in_the_whole_tree() -> None:
    """One invocation builds only the command it names (the rest costs about 1 ms a
    command); what it builds must be what the whole tree holds."""
    whole = _built(None)
    assert len(whole.commands) > 15
    for name, cmd in whole.commands.items():
        alone = _built(name)
        assert list(alone.commands) == [name]
        assert describe(alone.commands[name]) == describe(cmd)
        assert describe(alone)[3] == describe(whole)[3]  # the root's own options


def test_a_misspelt_command_is_answered_from_the_whole_tree() -> None:
    ran = run_main(["statsu"], env=HELP_ENV)
    assert ran.code == 2 and "No such command 'statsu'" in ran.stderr
    assert command(["statsu"]) is _built(None) and command(["status"]) is _built("status")
