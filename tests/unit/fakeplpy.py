"""A tiny stand-in for PL/Python's `plpy` module, for unit tests of plpython/ without a database.

It records statements and answers from canned results; it is NOT used by tests/sql or tests/client,
which run against a real Postgres.
"""

from __future__ import annotations


class FakeError(Exception):
    def __init__(self, message, detail=None, hint=None, sqlstate=None):
        super().__init__(message)
        self.detail, self.hint, self.sqlstate = detail, hint, sqlstate


class FakePlan:
    def __init__(self, query, types):
        self.query, self.types = query, types


class FakePlpy:
    Error = FakeError

    def __init__(self, answers=None):
        self.answers = answers or {}
        self.executed = []
        self.notices = []

    def prepare(self, query, types=None):
        return FakePlan(query, types or [])

    def execute(self, query, args=None):
        q = query.query if isinstance(query, FakePlan) else query
        self.executed.append((q, args))
        for key, value in self.answers.items():
            if key in q:
                return value(args) if callable(value) else value
        return []

    def error(self, message, detail=None, hint=None, sqlstate=None):
        raise FakeError(message, detail, hint, sqlstate)

    def notice(self, message, **kw):
        self.notices.append(message)

    def info(self, message, **kw):
        self.notices.append(message)
