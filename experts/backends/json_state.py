"""Where a JSON text being written stands: inside a string or not, how many containers are open, and how
far it still is from a complete value.

Read character by character as tokens arrive; shared by the closing reserve of structured outputs
(`structured.py`, `vllm_closing.py`) and the streaming of tool calls (`server/chat/tools.py`). Kept free
of the grammar engine so that reading JSON costs no import of it.

The distance to close is measured against the schema's shortest instance S (compact JSON, keys in the
order the grammar writes them): the output is S with free content inserted (longer strings, more digits,
optional keys), so S's characters that the output has matched, in order, are done, and what is left of S
is what closing still costs. A character matches only in the same context (string content against string
content, structure against structure), so a quote inside a value never counts as a closing one. Where the
output takes a longer branch than S's, fewer characters match and the estimate is high: the answer closes
early, never late. Earlier, the reserve was S's whole length from the first token: a forced tool call
(`{"name":"get_weather","arguments":{"city":""}}`, about 50 characters) at max_tokens 60 spent nearly the
whole budget in the reserve and closed its argument at once (`{"city": ""}`).
"""

from __future__ import annotations


def _content_flags(text: str) -> list[bool]:
    """For each character of the JSON `text`: whether it is string content (not structure, not a quote
    that opens or closes a string)."""
    flags, in_string, escaped = [], False, False
    for char in text:
        if escaped:
            escaped = False
            flags.append(True)
        elif in_string and char == "\\":
            escaped = True
            flags.append(True)
        elif char == '"':
            in_string = not in_string
            flags.append(False)
        else:
            flags.append(in_string)
    return flags


class JsonStringState:
    """Whether the JSON written so far ends inside a string, where only the closing quote closes anything;
    with `shortest` (the schema's shortest instance), how many of its characters are still to write."""

    def __init__(self, shortest: str = "") -> None:
        self.in_string = False
        self._escaped = False
        self.depth = 0  # objects and arrays open
        self._shortest = shortest
        self._content = _content_flags(shortest)
        self._matched = 0  # characters of `shortest` the output has written, in order

    @property
    def remaining(self) -> int:
        """Characters of the shortest instance not written yet: a lower bound on what closing costs."""
        return len(self._shortest) - self._matched

    def push(self, text: str) -> None:
        for char in text:
            if self._matched < len(self._shortest):
                content = self._escaped or (self.in_string and char != '"')
                if char == self._shortest[self._matched] and content == self._content[self._matched]:
                    self._matched += 1
            if self._escaped:
                self._escaped = False
            elif self.in_string and char == "\\":
                self._escaped = True
            elif char == '"':
                self.in_string = not self.in_string
            elif not self.in_string and char in "{[":
                self.depth += 1
            elif not self.in_string and char in "}]":
                self.depth -= 1

    @property
    def closing_string(self) -> bool:
        """A quote would close a string now (rather than a bracket a container)."""
        return self.in_string and not self._escaped
