"""`response_format` as a backend constraint: one JSON schema that both backends enforce with a grammar.

One rule is added to the user's schema, and the output still satisfies that schema: integers with no
bounds are kept to the interoperable range of RFC 7493 (|n| < 2^53). A grammar alone cannot stop a small
model that repeats a digit, and without the bound greedy decoding of SmolLM2-135M filled whole budgets
with "1111…"; with it, the number ends after 16 digits and the object closes.

The constraint also carries the schema's shortest instance (`schema_analysis.shortest_instance`): the
backends measure how far the output still is from a complete value against it (the closing reserve,
`experts/backends/closing.py`), so required keys not yet written still fit.

Every schema is judged before it costs anything (`schema_analysis.py`: depth, counts, no finite instance,
a deadline), and the whole of that work runs off the event loop (`constraint_off_loop`).
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from typing import Any, TypeVar

from experts.backends.base import OutputConstraint
from server.chat.schema_analysis import MAX_SCHEMA_COUNT, SCHEMA_SECONDS, SchemaProblem, check_shape, shortest_instance
from server.failures import InvalidRequest
from server.protocol import ResponseFormat

__all__ = ["MAX_SCHEMA_COUNT", "bounded_integers", "constraint_for", "constraint_off_loop", "schema_constraint"]
T = TypeVar("T")
SAFE_INTEGER = 2**53 - 1  # RFC 7493 (I-JSON): integers any JSON parser reads exactly
MAX_SCHEMA_BYTES = 64 * 1024


async def constraint_off_loop(build: Callable[[], T]) -> T:
    """Run `build` (whatever reads a client's schema) on a worker thread: the analysis keeps its own
    deadline, so the thread is freed within `SCHEMA_SECONDS`; the loop never waits on it meanwhile."""
    return await asyncio.to_thread(build)


def constraint_for(response_format: ResponseFormat | None, param: str = "response_format") -> OutputConstraint | None:
    """The constraint `response_format` asks for; None for free text. `param` names it in a refusal."""
    if response_format is None or response_format.type == "text":
        return None
    if response_format.type == "json_object":
        return OutputConstraint.any_object()
    assert response_format.json_schema is not None
    return schema_constraint(response_format.json_schema.schema_, param)


def schema_constraint(schema: dict[str, Any], param: str) -> OutputConstraint:
    """A constraint to produce an instance of `schema`, with unbounded integers bounded (see above); a 400
    naming `param` for a schema refused by its shape, size or instances."""
    try:
        check_shape(schema)  # first: the steps below recurse, and would on any depth
        text = json.dumps(bounded_integers(schema))  # key order kept: properties are generated in schema order
        if len(text) > MAX_SCHEMA_BYTES:
            raise SchemaProblem(f"the schema is longer than {MAX_SCHEMA_BYTES} bytes", "schema_too_large")
        return OutputConstraint(text, shortest_instance(schema, SCHEMA_SECONDS))
    except SchemaProblem as exc:
        raise InvalidRequest(str(exc), exc.code, param) from exc


def bounded_integers(schema: Any) -> Any:
    """A copy of `schema` where every integer type without a bound gets RFC 7493's."""
    if isinstance(schema, list):
        return [bounded_integers(item) for item in schema]
    if not isinstance(schema, dict):
        return schema
    copy = {key: bounded_integers(value) for key, value in schema.items()}
    types = copy.get("type")
    if types == "integer" or (isinstance(types, list) and "integer" in types):
        if "minimum" not in copy and "exclusiveMinimum" not in copy:
            copy["minimum"] = -SAFE_INTEGER
        if "maximum" not in copy and "exclusiveMaximum" not in copy:
            copy["maximum"] = SAFE_INTEGER
    return copy
