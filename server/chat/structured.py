"""`response_format` as a backend constraint: one JSON schema that both backends enforce with a grammar.

One rule is added to the user's schema, and the output still satisfies that schema: integers with no
bounds are kept to the interoperable range of RFC 7493 (|n| < 2^53). A grammar alone cannot stop a small
model that repeats a digit, and without the bound greedy decoding of SmolLM2-135M filled whole budgets
with "1111…"; with it, the number ends after 16 digits and the object closes.

The constraint also carries the schema's shortest instance (`shortest_instance`): the backends keep at
least its length in tokens of the budget to close the answer (the closing reserve, structured.py), so
required keys not yet written still fit.
"""

from __future__ import annotations

import json
from typing import Any

from experts.backends.base import OutputConstraint
from server.errors import APIError
from server.protocol import ResponseFormat

SAFE_INTEGER = 2**53 - 1  # RFC 7493 (I-JSON): integers any JSON parser reads exactly
MAX_SCHEMA_BYTES = 64 * 1024
# Grammar size grows with repetition counts (a minLength of 100,000 took xgrammar 1.2 s to compile here),
# and no answer within the token limit could use more: larger counts are refused.
MAX_SCHEMA_COUNT = 4096
_COUNTS = ("minLength", "maxLength", "minItems", "maxItems", "minProperties", "maxProperties")


def constraint_for(response_format: ResponseFormat | None, param: str = "response_format") -> OutputConstraint | None:
    """The constraint `response_format` asks for; None for free text. `param` names it in a refusal."""
    if response_format is None or response_format.type == "text":
        return None
    if response_format.type == "json_object":
        return OutputConstraint.any_object()
    assert response_format.json_schema is not None
    return schema_constraint(response_format.json_schema.schema_, param)


def schema_constraint(schema: dict[str, Any], param: str) -> OutputConstraint:
    """A constraint to produce an instance of `schema`, with unbounded integers bounded (see above)."""
    text = json.dumps(bounded_integers(schema))  # key order kept: properties are generated in schema order
    if len(text) > MAX_SCHEMA_BYTES:
        raise APIError(400, f"the schema is longer than {MAX_SCHEMA_BYTES} bytes", "invalid_request_error",
                       "schema_too_large", param)
    if not _largest_count(schema) <= MAX_SCHEMA_COUNT:  # NaN too
        raise APIError(400, f"the schema's lengths and counts ({', '.join(_COUNTS)}) must be at most "
                       f"{MAX_SCHEMA_COUNT}", "invalid_request_error", "schema_too_large", param)
    return OutputConstraint(text, json.dumps(shortest_instance(schema, schema)))


def shortest_instance(schema: Any, root: Any, depth: int = 0) -> Any:
    """A short instance of `schema` (as the grammar writes it: every required key, the least of each value).
    An estimate where the schema is beyond these rules (patterns, formats): it sizes a reserve only."""
    if not isinstance(schema, dict) or depth > 16:
        return None
    if "$ref" in schema and isinstance(schema["$ref"], str) and schema["$ref"].startswith("#/"):
        target: Any = root
        for part in schema["$ref"][2:].split("/"):
            target = target.get(part, {}) if isinstance(target, dict) else {}
        return shortest_instance(target, root, depth + 1)
    if "const" in schema:
        return schema["const"]
    if schema.get("enum"):
        return min(schema["enum"], key=lambda value: len(json.dumps(value)))
    for key in ("anyOf", "oneOf", "allOf"):
        if isinstance(schema.get(key), list) and schema[key]:
            options = [shortest_instance(option, root, depth + 1) for option in schema[key]]
            return options[0] if key == "allOf" else min(options, key=lambda value: len(json.dumps(value)))
    kind = schema.get("type", "object" if "properties" in schema else None)
    if isinstance(kind, list):
        kind = "null" if "null" in kind else kind[0] if kind else None
    if kind == "object":
        properties = schema.get("properties", {}) if isinstance(schema.get("properties"), dict) else {}
        return {name: shortest_instance(properties.get(name, {}), root, depth + 1)
                for name in schema.get("required", []) if isinstance(name, str)}
    if kind == "array":
        return [shortest_instance(schema.get("items", {}), root, depth + 1)] * int(schema.get("minItems", 0) or 0)
    if kind == "string":
        return "a" * int(schema.get("minLength", 0) or 0)
    if kind in ("integer", "number"):
        return 0
    if kind == "boolean":
        return False
    return None


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


def _largest_count(schema: Any) -> float:
    if isinstance(schema, list):
        return max((_largest_count(item) for item in schema), default=0)
    if not isinstance(schema, dict):
        return 0
    own = [v for k, v in schema.items() if k in _COUNTS and isinstance(v, int | float) and not isinstance(v, bool)]
    return max([*own, *(_largest_count(v) for v in schema.values())], default=0)
