"""Inbound text must be encodable: JSON may carry a lone surrogate (`"\\ud800"`), which Python keeps in a
str but no tokenizer, database or log line can encode. Refused at validation, before anything runs."""

from __future__ import annotations

from typing import Any


class InvalidText(ValueError):
    """A string holds a lone UTF-16 surrogate."""


def reject_lone_surrogates(data: Any) -> Any:
    """Walk parsed JSON and raise `InvalidText` at the first string that is not valid Unicode text."""
    if isinstance(data, str):
        try:
            data.encode("utf-8")
        except UnicodeEncodeError as exc:
            raise InvalidText(f"text holds a lone surrogate (\\u{ord(data[exc.start]):04x}) at position {exc.start}; "
                              "send valid UTF-8") from None
    elif isinstance(data, dict):
        for key, value in data.items():
            reject_lone_surrogates(key)
            reject_lone_surrogates(value)
    elif isinstance(data, list | tuple):
        for value in data:
            reject_lone_surrogates(value)
    return data
