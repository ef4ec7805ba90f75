"""The request failures services raise: what went wrong in the request's terms, never an HTTP status.

A service says *what* happened (the request is invalid, names something missing, conflicts with the
registry's state, finds the server full, unavailable or out of time) with OpenAI's `code` and `param`;
`server/errors.py` is the one place that turns each kind into its status and error type. Failures of
the model layer are `experts.errors` types, mapped there too.
"""

from __future__ import annotations


class RequestFailure(Exception):
    """A request that cannot be honoured. `code` and `param` are OpenAI's error fields; `headers` go on
    the answer (Retry-After, Connection: close)."""

    def __init__(self, message: str, code: str | None = None, param: str | None = None,
                 headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.message, self.code, self.param, self.headers = message, code, param, headers


class InvalidRequest(RequestFailure):
    """The request itself is wrong: a value out of range, parameters that cannot go together."""


class NotFound(RequestFailure):
    """The request names something that does not exist (a model, an expert, a job)."""


class Conflict(RequestFailure):
    """The request is well-formed but clashes with the state it would change."""


class Overloaded(RequestFailure):
    """The server is at capacity; the same request may succeed later (Retry-After says when)."""


class Unavailable(RequestFailure):
    """Something the request needs is out of service now (storage, an adapter, the registry mid-change)."""


class TimedOut(RequestFailure):
    """The request ran out of its time before it could be answered."""
