"""Run the code blocks of Markdown files, in order, against a fresh database with indb installed -- what
tests/docs/test_readme.py does for README.md, for drafts and sections:

    .venv/bin/python tests/docs/run_markdown.py README.md            # stops at the first failing block
    KEEP=1 .venv/bin/python tests/docs/run_markdown.py draft.md      # keep the database to look around
    DSN="$(indb dsn)" .venv/bin/python tests/docs/run_markdown.py README.md   # on a database of yours (make demo's)
    CONTINUE=1 ...                                                   # go on after a failing block
"""

from __future__ import annotations

import os
import secrets
import sys
from pathlib import Path

import psycopg

sys.path.insert(0, str(Path(__file__).resolve().parent))
from readme_runner import Runner, collect

REPO = Path(__file__).resolve().parents[2]


def main(paths: list[str]) -> int:
    from indb.install import install
    from indb.localdb import Cluster

    name = None
    dsn = os.environ.get("DSN")
    if not dsn:
        cluster = Cluster.local()
        if not cluster.running():
            cluster.start()
        name = f"readme_{secrets.token_hex(3)}"
        with psycopg.connect(cluster.dsn("postgres"), autocommit=True) as c:
            c.execute(f'create database "{name}"')
        dsn = cluster.dsn(name)
        install(dsn, venv=sys.prefix, log=lambda *a: None)
    runner = Runner(dsn, REPO)
    failed = False
    try:
        for b in collect("\n".join(Path(p).read_text() for p in paths)):
            o = runner.run(b)
            print(f"[{'ok' if o.ok else 'FAIL'}] {b.where()} {o.problem}", flush=True)
            if not o.ok:
                failed = True
                print(o.output[-3000:])
                if not os.environ.get("CONTINUE"):
                    break
    finally:
        runner.close()
        if os.environ.get("KEEP") or name is None:
            print(f"database kept: {dsn}")
        else:
            with psycopg.connect(cluster.dsn("postgres"), autocommit=True) as c:
                c.execute(f'drop database "{name}" with (force)')
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
