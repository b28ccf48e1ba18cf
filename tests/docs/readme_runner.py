"""Run the code blocks of a Markdown document in order, as a new user pasting them would.

* ```sql blocks go to ONE psql session (so SET, \\set and temporary tables carry over, as in a terminal);
* ```python blocks go to ONE Python process of the runtime venv (names defined in one block exist in the next);
* ```sh / ```bash blocks run in bash from the repository root, one process each.
* A ```text block right after a run block (nothing between them) is that block's expected output (NOTICE and WARNING lines of
  the server are left out unless the expected text shows some). It is compared after normalisation: runs of spaces collapse, numbers match within a relative tolerance (1%), uuids and
  timestamps match any uuid / timestamp, integers in a psql table's id columns (``id``, ``*_id``) match any
  integer (they depend on what the database held before), so does a number right after "model", "run",
  "deployment", "dataset" or "experiment" in a sentence, and a line that is only ``...`` matches any number
  of lines.
* An HTML comment right before a block is a directive for the runner, visible in the Markdown source:
    <!-- test: skip -- <reason> -->      the block is not run (the reason is required and reported)
    <!-- test: expect-error <SQLSTATE or text> -->   the block must fail, with that SQLSTATE/text
  Every other block runs and must succeed.

Parsing uses markdown-it-py (already in the runtime lock through rich).
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import textwrap
from dataclasses import dataclass, field
from pathlib import Path

from markdown_it import MarkdownIt

RUNNABLE = {"sql", "python", "sh", "bash"}
DIRECTIVE = re.compile(r"<!--\s*test:\s*(?P<kind>skip|expect-error)\b\s*(?:--\s*)?(?P<arg>.*?)\s*-->", re.S)


@dataclass
class Block:
    index: int
    lang: str
    code: str
    line: int
    skip: str | None = None
    expect_error: str | None = None
    expected: str | None = None
    heading: str = ""

    def where(self) -> str:
        return f"README block {self.index} (line {self.line}, {self.lang}, under '{self.heading}')"


@dataclass
class Outcome:
    block: Block
    ok: bool
    output: str = ""
    problem: str = ""


def collect(markdown: str) -> list[Block]:
    tokens = MarkdownIt("commonmark").parse(markdown)
    blocks: list[Block] = []
    pending: tuple[str, str] | None = None
    heading = ""
    for i, t in enumerate(tokens):
        if t.type == "heading_open":
            heading = tokens[i + 1].content
        if t.type == "html_block":
            m = DIRECTIVE.search(t.content)
            if m:
                pending = (m.group("kind"), m.group("arg").strip())
            continue
        if t.type != "fence":
            continue
        lang = (t.info or "").split()[0].lower() if t.info else ""
        line = (t.map[0] + 1) if t.map else 0
        if lang == "text":
            # the expected output of the block right before it; a text block after prose is an illustration
            if blocks and blocks[-1].expected is None and i > 0 and tokens[i - 1].type == "fence":
                blocks[-1].expected = t.content
            pending = None
            continue
        if lang not in RUNNABLE:
            pending = None
            continue
        b = Block(len(blocks) + 1, lang, t.content, line, heading=heading)
        if pending:
            kind, arg = pending
            if kind == "skip":
                if not arg:
                    raise ValueError(f"{b.where()}: a skip needs a reason: <!-- test: skip -- why -->")
                b.skip = arg
            else:
                b.expect_error = arg or "ERROR"
        pending = None
        blocks.append(b)
    return blocks


# ------------------------------------------------------------------------------------------- comparing
_NUM = re.compile(r"^[-+]?(\d[\d,]*\.?\d*|\.\d+)([eE][-+]?\d+)?%?$")
_UUID = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$", re.I)
_TS = re.compile(r"^\d{4}-\d{2}-\d{2}([ T]\d{2}:\d{2}(:\d{2}(\.\d+)?)?([+-]\d{2}(:?\d{2})?|Z)?)?$")
_TIME = re.compile(r"^\d{2}:\d{2}(:\d{2}(\.\d+)?)?([+-]\d{2}(:?\d{2})?|Z)?$")


def _tokens(line: str) -> list[str]:
    return [t for t in re.split(r"[\s|]+", line.strip()) if t]


def _same_token(want: str, got: str) -> bool:
    if want == got:
        return True
    if _UUID.match(want) and _UUID.match(got):
        return True
    if (_TS.match(want) and _TS.match(got)) or (_TIME.match(want) and _TIME.match(got)):
        return True
    w, g = want.rstrip("%,").replace(",", ""), got.rstrip("%,").replace(",", "")
    if _NUM.match(want) and _NUM.match(got):
        try:
            a, b = float(w), float(g)
        except ValueError:
            return False
        return abs(a - b) <= max(1e-9, 0.01 * max(abs(a), abs(b)))
    return False


_INT = re.compile(r"^-?\d+$")


def _is_rule(line: str) -> bool:
    return bool(line.strip()) and set(line.strip()) <= set("-+")


def _id_columns(want: list[str]) -> list[set[int]]:
    """For each expected line: the cell positions of its psql table that hold ids (a column ``id`` or ``*_id``,
    whose numbers depend on what the database held before)."""
    out: list[set[int]] = []
    cols: set[int] = set()
    for i, ln in enumerate(want):
        if "|" not in ln:
            if not _is_rule(ln):
                cols = set()  # "(3 rows)", text between tables: the table ended
            out.append(set())
        elif i + 1 < len(want) and _is_rule(want[i + 1]):
            names = [c.strip() for c in ln.split("|")]
            cols = {k for k, n in enumerate(names) if n == "id" or n.endswith("_id")}
            out.append(set())  # the header itself
        else:
            out.append(cols)
    return out


# "model 4", "run 12": a number right after one of these words is an id in a sentence
_ID_NOUNS = {"model", "run", "deployment", "dataset", "experiment"}


def _same_tokens(want: list[str], got: list[str]) -> bool:
    if len(want) != len(got):
        return False
    for k, (a, b) in enumerate(zip(want, got)):
        if k and want[k - 1].lower() in _ID_NOUNS and _INT.match(a) and _INT.match(b):
            continue
        if not _same_token(a, b):
            return False
    return True


def _same_row(want: str, got: str, ids: set[int]) -> bool:
    w, g = want.split("|"), got.split("|")
    if len(w) != len(g):
        return False
    for k, (a, b) in enumerate(zip(w, g)):
        a, b = a.strip(), b.strip()
        if k in ids and (a == b == "" or (_INT.match(a) and _INT.match(b))):
            continue
        if not _same_tokens(_tokens(a), _tokens(b)):
            return False
    return True


def matches(expected: str, got: str) -> bool:
    """Does output ``got`` match the ``expected`` text (see the module docstring for the rules)?"""
    want = [ln for ln in expected.rstrip().splitlines() if ln.strip()]
    have = [ln for ln in got.rstrip().splitlines() if ln.strip()]
    if not any(ln.startswith(("NOTICE:", "WARNING:")) for ln in want):
        # the server's notices (progress, "already exists, skipping") are not the result being shown
        have = [ln for ln in have if not ln.startswith(("NOTICE:", "WARNING:", "psql:"))]
    ids = _id_columns(want)

    def go(i: int, j: int) -> bool:
        if i == len(want):
            return j == len(have)
        if want[i].strip() == "...":
            return any(go(i + 1, k) for k in range(j, len(have) + 1))
        if j == len(have):
            return False
        wt, ht = _tokens(want[i]), _tokens(have[j])
        rule = _is_rule(want[i]) and _is_rule(have[j])  # any width
        if ids[i] and not rule:
            if not _same_row(want[i], have[j], ids[i]):
                return False
        elif not rule and not _same_tokens(wt, ht):
            return False
        return go(i + 1, j + 1)

    return go(0, 0)


# ------------------------------------------------------------------------------------------- running
class PsqlSession:
    """One interactive psql, fed block by block; a marker line ends each block's output."""

    MARK = "@@indb-readme-block-done@@"

    def __init__(self, dsn: str, env: dict[str, str], cwd: Path):
        self.p = subprocess.Popen(
            ["psql", "-X", "-q", "-v", "ON_ERROR_STOP=0", "-v", "VERBOSITY=default", dsn],
            cwd=cwd,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            bufsize=1,
            env=env,
        )

    def run(self, code: str) -> tuple[str, bool]:
        assert self.p.stdin and self.p.stdout
        self.p.stdin.write(code.rstrip() + f"\n\\echo {self.MARK}\n")
        self.p.stdin.flush()
        out = []
        for line in self.p.stdout:
            if line.strip() == self.MARK:
                break
            out.append(line)
        text = "".join(out)
        failed = bool(re.search(r"^(ERROR|FATAL|psql:.*ERROR):", text, re.M))
        return text, failed

    def close(self) -> None:
        if self.p.stdin:
            self.p.stdin.close()
        self.p.wait(timeout=30)


PY_SERVER = r"""
import contextlib, io, sys, traceback
ns = {"__name__": "__readme__"}
while True:
    header = sys.stdin.readline()
    if not header:
        break
    code = sys.stdin.read(int(header))
    buf = io.StringIO()
    ok = True
    with contextlib.redirect_stdout(buf), contextlib.redirect_stderr(buf):
        try:
            exec(compile(code, "<README>", "exec"), ns)
        except BaseException:
            ok = False
            traceback.print_exc()
    out = buf.getvalue()
    sys.stdout.write(f"{'OK' if ok else 'FAIL'} {len(out)}\n{out}")
    sys.stdout.flush()
"""


class PythonSession:
    """One Python process of the venv; each block is exec'd in the same namespace."""

    def __init__(self, env: dict[str, str], cwd: Path):
        self.p = subprocess.Popen(
            [sys.executable, "-u", "-c", PY_SERVER],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            env=env,
            cwd=cwd,
        )

    def run(self, code: str) -> tuple[str, bool]:
        assert self.p.stdin and self.p.stdout
        self.p.stdin.write(f"{len(code)}\n{code}")
        self.p.stdin.flush()
        header = self.p.stdout.readline()
        if not header:
            return "the Python process died", True
        status, n = header.split()
        return self.p.stdout.read(int(n)), status != "OK"

    def close(self) -> None:
        if self.p.stdin:
            self.p.stdin.close()
        self.p.wait(timeout=30)


@dataclass
class Runner:
    """Runs blocks against ``dsn``: INDB_DSN and the PG* variables point every client (indb.connect(), the indb
    CLI, psql in shell blocks) at it."""

    dsn: str
    cwd: Path
    env: dict[str, str] = field(default_factory=lambda: dict(os.environ))
    _psql: PsqlSession | None = None
    _py: PythonSession | None = None

    def __post_init__(self) -> None:
        import psycopg

        parts = psycopg.conninfo.conninfo_to_dict(self.dsn)
        self.env = {**self.env, "INDB_DSN": self.dsn}
        # shell blocks run as after the README's `source .venv/bin/activate`: this venv's commands come first
        self.env["VIRTUAL_ENV"] = sys.prefix
        self.env["PATH"] = os.pathsep.join([str(Path(sys.prefix) / "bin"), self.env.get("PATH", "")])
        for key, var in (("host", "PGHOST"), ("port", "PGPORT"), ("dbname", "PGDATABASE"), ("user", "PGUSER")):
            if parts.get(key):
                self.env[var] = str(parts[key])

    def run(self, b: Block) -> Outcome:
        if b.skip:
            return Outcome(b, True, problem=f"skipped: {b.skip}")
        if b.lang == "sql":
            self._psql = self._psql or PsqlSession(self.dsn, self.env, self.cwd)
            out, failed = self._psql.run(b.code)
        elif b.lang == "python":
            self._py = self._py or PythonSession(self.env, self.cwd)
            out, failed = self._py.run(textwrap.dedent(b.code))
        else:
            r = subprocess.run(
                ["bash", "-e", "-o", "pipefail", "-c", b.code],
                cwd=self.cwd,
                env=self.env,
                capture_output=True,
                text=True,
                timeout=1800,
            )
            out, failed = r.stdout + r.stderr, r.returncode != 0
        if b.expect_error:
            if not failed:
                return Outcome(b, False, out, f"expected an error ({b.expect_error}) but the block succeeded")
            if b.expect_error != "ERROR" and b.expect_error not in out:
                return Outcome(b, False, out, f"expected an error mentioning {b.expect_error!r}")
            return Outcome(b, True, out)
        if failed:
            return Outcome(b, False, out, "the block failed")
        if b.expected is not None and not matches(b.expected, out):
            return Outcome(b, False, out, "the output differs from the README's")
        return Outcome(b, True, out)

    def close(self) -> None:
        for s in (self._psql, self._py):
            if s is not None:
                s.close()
