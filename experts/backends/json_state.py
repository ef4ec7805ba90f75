"""Where a JSON text being written stands: inside a string or not, and how many containers are open.

Read character by character as tokens arrive; shared by the closing reserve of structured outputs
(`structured.py`, `vllm_closing.py`) and the streaming of tool calls (`server/chat/tools.py`). Kept free
of the grammar engine so that reading JSON costs no import of it.
"""

from __future__ import annotations


class JsonStringState:
    """Whether the JSON written so far ends inside a string, where only the closing quote closes anything."""

    def __init__(self) -> None:
        self.in_string = False
        self._escaped = False
        self.depth = 0  # objects and arrays open

    def push(self, text: str) -> None:
        for char in text:
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
