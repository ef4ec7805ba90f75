"""Free-form settings mappings (a policy's parameters, conversation routing's) checked against the keyword
parameters of what they configure, so a typo is named when the settings load, not at the first request."""

from __future__ import annotations

import inspect
import typing
from collections.abc import Callable, Mapping
from typing import Any

from pydantic import TypeAdapter, ValidationError


def checked_keywords(target: Callable[..., Any], params: Mapping[str, Any], owner: str,
                     fixed: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """`params` checked against the keyword parameters of `target` (a policy or component class): unknown
    keys and values of the wrong type are named with the keys that are accepted, and `target` is built once
    with them so its own checks run too. Returns the values as `target` takes them ("4" from an environment
    variable becomes 4). `fixed` holds the arguments that other settings supply (a policy's threshold)."""
    fixed = dict(fixed or {})
    signature = inspect.signature(target)
    hints = typing.get_type_hints(target.__init__ if inspect.isclass(target) else target)
    accepted = [name for name, p in signature.parameters.items()
                if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY) and name not in fixed]
    listing = ", ".join(accepted) or "none"
    unknown = [key for key in params if key not in accepted]
    if unknown:
        raise ValueError(f"unknown key{'s' if len(unknown) > 1 else ''} {', '.join(map(repr, unknown))} for {owner} "
                         f"(accepted: {listing})")
    converted = {}
    for key, value in params.items():
        try:
            converted[key] = TypeAdapter(hints.get(key, Any)).validate_python(value)
        except ValidationError as exc:
            reason = exc.errors()[0]["msg"]
            raise ValueError(f"{key}: {value!r} is not valid for {owner}: {reason}") from None
    try:
        target(**fixed, **converted)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{exc} (accepted: {listing})") from None
    return converted
