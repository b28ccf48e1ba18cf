"""The whole CLI, as a newcomer meets it: every command, subcommand and option says what it does, and
`--help` works everywhere."""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

from indb.cli import build_parser

BIN = Path(sys.prefix) / "bin"


def _walk(parser: argparse.ArgumentParser, path: tuple[str, ...] = ()):
    yield path, parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            helps = {a.dest: a.help for a in action._choices_actions}
            for name, sub in action.choices.items():
                assert helps.get(name), f"`indb {' '.join((*path, name))}` has no help text in its parent's list"
                yield from _walk(sub, (*path, name))


def test_every_command_and_option_has_help_text():
    seen = 0
    for path, parser in _walk(build_parser()):
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                continue
            assert action.help, f"`indb {' '.join(path)}` {action.option_strings or action.dest} has no help text"
            seen += 1
    assert seen > 40


def test_help_works_for_every_command():
    for path, _ in _walk(build_parser()):
        r = subprocess.run([str(BIN / "indb"), *path, "--help"], capture_output=True, text=True, timeout=60)
        assert r.returncode == 0 and r.stdout.startswith("usage: indb"), (path, r.stderr)


def test_a_command_that_cannot_connect_says_so_without_a_traceback(cluster):
    """A newcomer's first `indb install --dsn ...` names a database that does not exist, or a DSN with a typo:
    one line saying it cannot connect and what to do, exit status 1, no Python traceback. Every command, not only
    install: the same for one that reads the database (`indb models`)."""
    missing = cluster.dsn("indb_no_such_database")
    for args, expected in [
        (["install", "--dsn", missing], 'database "indb_no_such_database" does not exist'),
        (["install", "--dsn", "not a dsn"], 'missing "=" after "not"'),
        (["models", "--dsn", missing], 'database "indb_no_such_database" does not exist'),
    ]:
        r = subprocess.run([str(BIN / "indb"), *args], capture_output=True, text=True, timeout=60)
        assert r.returncode == 1, (args, r.stdout, r.stderr)
        assert r.stderr.startswith(f"indb {args[0]}: error: ") and expected in r.stderr, (args, r.stderr)
        assert "Traceback" not in r.stderr, (args, r.stderr)
    assert (
        "indb db start"
        in subprocess.run(
            [str(BIN / "indb"), "install", "--dsn", missing], capture_output=True, text=True, timeout=60
        ).stderr
    )
