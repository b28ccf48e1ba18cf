"""A small exception hierarchy, mapped from SQLSTATEs raised by the SQL API."""

from __future__ import annotations


class IndbError(Exception):
    """Base class of everything indb raises. ``sqlstate`` is set when the error came from the database."""

    sqlstate: str | None = None
    default_sqlstate: str | None = None  # what an error the client raises itself carries when it names none

    def __init__(self, message: str, sqlstate: str | None = None, detail: str | None = None, hint: str | None = None):
        super().__init__(message)
        self.sqlstate = sqlstate if sqlstate is not None else self.default_sqlstate
        self.detail = detail
        self.hint = hint

    def __str__(self) -> str:
        parts = [super().__str__()]
        if self.detail:
            parts.append(f"DETAIL: {self.detail}")
        if self.hint:
            parts.append(f"HINT: {self.hint}")
        return "\n".join(parts)


class ClusterError(IndbError):
    """The local cluster could not be set up, started or stopped."""


class InstallError(IndbError):
    """The schema could not be installed (missing extension, failed migration)."""


class InvalidInput(IndbError):
    """Bad arguments: 22xxx data exceptions, 42xxx names that do not exist. Raised by the client itself (an argument
    it refuses before calling the server) it carries 22023, invalid_parameter_value."""

    default_sqlstate = "22023"


class NotFound(InvalidInput):
    """An object named in the call does not exist (42704 undefined_object, 42P01 undefined_table, P0002)."""

    default_sqlstate = "42704"


class PermissionDenied(IndbError):
    """42501 insufficient_privilege."""


class ConflictError(IndbError):
    """23xxx integrity violations, 40001/40P01 serialization failures and deadlocks: retry may succeed."""


class RuntimeFailure(IndbError):
    """The in-database runtime failed (model load, training, embedding): 38xxx, XX000 and indb's IX codes."""


class ReplicaLagError(IndbError):
    """Read-your-writes: the replica had not replayed the session's last write within the timeout."""


class Canceled(IndbError):
    """57014 query_canceled: statement_timeout or a cancel request."""


def from_sqlstate(sqlstate: str | None) -> type[IndbError]:
    if not sqlstate:
        return IndbError
    if sqlstate == "57014":
        return Canceled
    if sqlstate == "42501":
        return PermissionDenied
    if sqlstate in ("42704", "42P01", "42883", "P0002", "IN404"):
        return NotFound
    if sqlstate.startswith(("22", "42", "2F")) or sqlstate == "P0001":
        return InvalidInput
    if sqlstate.startswith("23") or sqlstate in ("40001", "40P01", "55P03"):
        return ConflictError
    if sqlstate.startswith(("38", "39", "XX", "IX")):
        return RuntimeFailure
    return IndbError


def translate(exc: BaseException) -> IndbError:
    """Turn a psycopg error into the matching IndbError (keeps message, detail and hint)."""
    diag = getattr(exc, "diag", None)
    sqlstate = getattr(exc, "sqlstate", None)
    message = _strip_plpython_prefix(getattr(diag, "message_primary", None) or str(exc).strip())
    detail = getattr(diag, "message_detail", None)
    hint = getattr(diag, "message_hint", None)
    err = from_sqlstate(sqlstate)(message, sqlstate=sqlstate, detail=detail, hint=hint)
    err.__cause__ = exc
    return err


def _strip_plpython_prefix(message: str) -> str:
    """PL/Python prefixes errors raised with plpy.error() by 'plpy.Error: ' (and SPI ones by
    'spiexceptions.Name: '); the SQLSTATE already says what kind of error it is."""
    for prefix in ("plpy.Error: ", "plpy.SPIError: "):
        if message.startswith(prefix):
            return message[len(prefix) :]
    if message.startswith("spiexceptions.") and ": " in message:
        return message.split(": ", 1)[1]
    return message
