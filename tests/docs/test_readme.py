"""README.md is the interface specification, so it runs: every code block, in order, against a fresh database
with indb installed -- SQL in one psql session, Python in one interpreter of the venv, shell in bash from the
repository root -- and every result the README shows is compared with what the block printed. A block that
cannot run in tests carries a visible `<!-- test: skip -- reason -->`; the skips are listed at the end."""

from __future__ import annotations

import re
import sys
from pathlib import Path

import pytest
from readme_runner import Runner, collect

REPO = Path(__file__).resolve().parents[2]
README = REPO / "README.md"


@pytest.fixture(scope="module")
def readme_db(empty_db):
    from indb.install import install

    dsn = empty_db("indb_readme")
    install(dsn, venv=sys.prefix, log=lambda *a: None)
    return dsn


def test_every_readme_block_runs_and_shows_what_the_readme_says(readme_db, capsys):
    blocks = collect(README.read_text())
    assert len(blocks) > 50, "README.md lost its examples"
    runner = Runner(readme_db, REPO)
    skipped = []
    try:
        for b in blocks:
            o = runner.run(b)
            assert o.ok, f"{b.where()}: {o.problem}\n--- the block printed ---\n{o.output[-4000:]}"
            if b.skip:
                skipped.append(f"{b.where()}: {b.skip}")
    finally:
        runner.close()
    with capsys.disabled():
        print(f"\nREADME.md: {len(blocks)} blocks, {len(blocks) - len(skipped)} run, {len(skipped)} skipped:")
        for s in skipped:
            print(f"  skipped {s}")


def test_the_readme_role_table_is_the_behaviour_matrix():
    """The role table in the README is generated from tests/security/matrix.py, which test_matrix.py proves by
    calling every function as every role: a change to the grants shows up here until the README follows."""
    sys.path.insert(0, str(REPO / "tests" / "security"))
    import matrix

    m = re.search(r"<!-- role-table: begin[^>]*-->\n(.*?)\n<!-- role-table: end -->", README.read_text(), re.S)
    assert m, "README.md has no generated role table"
    assert m.group(1).strip() == matrix.role_table_markdown().strip(), (
        "the README's role table differs from tests/security/matrix.py: regenerate it with "
        "`python tests/security/matrix.py --readme`"
    )
