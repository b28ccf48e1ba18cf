"""Errors raised from PL/Python with a SQLSTATE, a message that names the problem, and a hint.

SQLSTATEs used by indb (standard classes where one fits):
  22023 invalid_parameter_value   bad argument value (k <= 0, wrong dimension, bad option)
  22P02 invalid_text_representation
  42704 undefined_object          unknown model, vectorizer, collection, project, feature
  42P01 undefined_table           relation does not exist
  42703 undefined_column          column does not exist
  42710 duplicate_object          name already taken
  2201E/22000 data exceptions
  58P01 undefined_file            a model folder or venv that does not exist
  38000 external_routine_exception  the runtime (torch, xgboost, ...) failed
"""

from __future__ import annotations


class IndbRuntimeError(Exception):
    """An error to surface to SQL with a SQLSTATE. `raise_to(plpy)` turns it into a Postgres error."""

    def __init__(self, sqlstate: str, message: str, detail: str | None = None, hint: str | None = None):
        super().__init__(message)
        self.sqlstate = sqlstate
        self.message = message
        self.detail = detail
        self.hint = hint


def invalid(message: str, detail: str | None = None, hint: str | None = None) -> IndbRuntimeError:
    return IndbRuntimeError("22023", message, detail, hint)


def undefined(message: str, detail: str | None = None, hint: str | None = None) -> IndbRuntimeError:
    return IndbRuntimeError("42704", message, detail, hint)


def external(message: str, detail: str | None = None, hint: str | None = None) -> IndbRuntimeError:
    return IndbRuntimeError("38000", message, detail, hint)


def raise_to(plpy, err: IndbRuntimeError):
    kw = {"sqlstate": err.sqlstate}
    if err.detail:
        kw["detail"] = err.detail
    if err.hint:
        kw["hint"] = err.hint
    plpy.error(err.message, **kw)


def call(plpy, fn, *args, **kwargs):
    """Run fn, mapping IndbRuntimeError to a Postgres error with its SQLSTATE."""
    try:
        return fn(*args, **kwargs)
    except IndbRuntimeError as e:
        raise_to(plpy, e)
