"""Tool calling: how tools reach the model, how its answer becomes `tool_calls`, and how calls stream.

One format, the Hermes one that Qwen, NousResearch and SmolLM2's instruction data use: the tools are
described in a system message inside `<tools></tools>`, and a call is a JSON object
`{"name": ..., "arguments": {...}}` inside `<tool_call></tool_call>`. Earlier calls and tool results in the
conversation are written back in the same format, so any chat template renders them (tool results go in
as user turns wrapped in `<tool_response>`: many templates accept no `tool` role).

- `tool_choice="auto"`: the model writes freely; calls it writes in that format are parsed out. How often
  the 135M model chooses to call is its own business (README, "Tool calls").
- `"required"` or a named function: a grammar constrains the whole answer to a JSON array of calls
  (`minItems` 1, at most one when `parallel_tool_calls` is false), each naming one of the allowed tools
  with arguments valid against its schema, as vLLM does. It always parses.
- `"none"`: the tools are left out of the prompt entirely.
"""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from experts.backends.base import OutputConstraint
from experts.backends.json_state import JsonStringState
from server.chat.structured import schema_constraint
from server.protocol import (
    ChatMessage,
    FunctionCall,
    FunctionCallDelta,
    NamedToolChoice,
    ToolCall,
    ToolCallDelta,
    ToolDefinition,
)

CALL_OPEN, CALL_CLOSE = "<tool_call>", "</tool_call>"
_CALLS = re.compile(re.escape(CALL_OPEN) + r"\s*(.*?)\s*(?:" + re.escape(CALL_CLOSE) + r"|$)", re.DOTALL)

_SYSTEM = """# Tools

You may call one or more functions to assist with the user query.

You are provided with function signatures within <tools></tools> XML tags:
<tools>
{tools}
</tools>

For each function call, return a json object with function name and arguments within <tool_call></tool_call> \
XML tags:
<tool_call>
{{"name": <function-name>, "arguments": <args-json-object>}}
</tool_call>"""


def new_call_id() -> str:
    return f"call_{uuid.uuid4().hex[:24]}"


@dataclass(frozen=True)
class ToolUse:
    """The tools of one request and how the answer may use them."""

    tools: tuple[ToolDefinition, ...]
    forced: tuple[str, ...] | None  # the functions one of which must be called; None: the model decides
    parallel: bool

    def constraint(self) -> OutputConstraint | None:
        """The grammar of a forced answer: an array of calls of the allowed functions."""
        if self.forced is None:
            return None
        calls = [{"type": "object", "additionalProperties": False, "required": ["name", "arguments"],
                  "properties": {"name": {"const": tool.function.name}, "arguments": tool.function.parameters}}
                 for tool in self.tools if tool.function.name in self.forced]
        schema: dict[str, Any] = {"type": "array", "minItems": 1,
                                  "items": calls[0] if len(calls) == 1 else {"anyOf": calls}}
        if not self.parallel:
            schema["maxItems"] = 1
        return schema_constraint(schema, "tools")

    def system_prompt(self) -> str:
        return _SYSTEM.format(tools="\n".join(tool.model_dump_json(exclude_none=True) for tool in self.tools))

    def parse(self, text: str) -> tuple[str | None, list[ToolCall]]:
        """The answer's text before any call, and its calls (none when it holds no well-formed call of a
        known function: then the whole text is content)."""
        if self.forced is not None:
            try:
                calls = [_call(item) for item in json.loads(text)]
            except (ValueError, TypeError, KeyError):  # cut short by max_tokens
                return text, []
            return None, calls
        known = {tool.function.name for tool in self.tools}
        calls = []
        for match in _CALLS.finditer(text):
            try:
                call = _call(json.loads(match.group(1)))
            except (ValueError, TypeError, KeyError):
                continue
            if call.function.name in known:
                calls.append(call)
        if not calls:
            return text, []
        content = text[:text.find(CALL_OPEN)].strip()
        return content or None, calls if self.parallel else calls[:1]


def tool_use_for(tools: list[ToolDefinition] | None, choice: str | NamedToolChoice | None,
                 parallel: bool) -> ToolUse | None:
    """None when the answer cannot call a tool (no tools, or tool_choice 'none')."""
    if not tools or choice == "none":
        return None
    if isinstance(choice, NamedToolChoice):
        forced: tuple[str, ...] | None = (choice.function.name,)
    elif choice == "required":
        forced = tuple(tool.function.name for tool in tools)
    else:
        forced = None
    return ToolUse(tuple(tools), forced, parallel)


def prompt_messages(messages: Sequence[ChatMessage], tool_use: ToolUse | None) -> list[dict[str, str]]:
    """The conversation as plain role/content messages for the chat template: the tools described in the
    system message, earlier calls and tool results written in the Hermes format."""
    rendered = []
    for message in messages:
        if message.role == "tool":
            rendered.append({"role": "user", "content": f"<tool_response>\n{message.text()}\n</tool_response>"})
            continue
        content = message.text()
        for call in message.tool_calls or []:
            content += f"\n{CALL_OPEN}\n" + json.dumps({"name": call.function.name,
                                                        "arguments": _arguments(call.function.arguments)}) \
                       + f"\n{CALL_CLOSE}"
        rendered.append({"role": message.role, "content": content.strip("\n")})
    if tool_use is not None:
        if rendered and rendered[0]["role"] in ("system", "developer"):
            rendered[0] = {**rendered[0], "content": rendered[0]["content"] + "\n\n" + tool_use.system_prompt()}
        else:
            rendered.insert(0, {"role": "system", "content": tool_use.system_prompt()})
    return rendered


def call_deltas(calls: list[ToolCall], start: int = 0) -> list[ToolCallDelta]:
    """Whole calls as OpenAI streams them: per call, a delta opening it (id, type, name, empty arguments),
    then its arguments; indexes from `start`."""
    deltas = []
    for index, call in enumerate(calls, start):
        deltas.append(ToolCallDelta(index=index, id=call.id, type="function",
                                    function=FunctionCallDelta(name=call.function.name, arguments="")))
        deltas.append(ToolCallDelta(index=index, function=FunctionCallDelta(arguments=call.function.arguments)))
    return deltas


# The start of a call in a forced answer, up to its arguments: `[{"name": "f", "arguments": ` (or the same
# after the previous call's `}` and a comma). The grammar writes the name first, as the schema orders it.
_CALL_HEADER = re.compile(r'(?:\s*\})?\s*[\[,]\s*\{\s*"name"\s*:\s*"((?:[^"\\]|\\.)*)"\s*,\s*"arguments"\s*:\s*')


class CallStream:
    """Streams a forced answer's calls while they are written, as OpenAI does: a delta opening each call
    (id, type, name) as soon as its name is complete, then its arguments piece by piece.

    The grammar guarantees the shape, so the text can be read as it comes; `finish` reconciles with the
    parsed answer (a call cut off by `max_tokens` ends with partial arguments, as on OpenAI).
    """

    def __init__(self) -> None:
        self._text = ""
        self._at = 0  # where reading continues
        self._arguments: JsonStringState | None = None  # inside a call's arguments
        self._started = False  # the arguments' first character has come
        self.opened = 0  # calls opened so far

    def feed(self, delta: str) -> list[ToolCallDelta]:
        self._text += delta
        deltas: list[ToolCallDelta] = []
        while True:
            if self._arguments is None:
                header = _CALL_HEADER.match(self._text, self._at)
                if header is None:
                    return deltas
                deltas.append(ToolCallDelta(index=self.opened, id=new_call_id(), type="function",
                                            function=FunctionCallDelta(name=json.loads(f'"{header.group(1)}"'),
                                                                       arguments="")))
                self.opened += 1
                self._at, self._arguments, self._started = header.end(), JsonStringState(), False
            while self._at < len(self._text) and not self._started and self._text[self._at].isspace():
                self._at += 1  # the space after `"arguments":` may come in the next token
            start, end = self._at, None
            for at in range(start, len(self._text)):
                self._started = True
                self._arguments.push(self._text[at])
                if self._arguments.depth == 0 and not self._arguments.in_string:
                    end = at + 1
                    break
            piece = self._text[start:end if end is not None else len(self._text)]
            if piece:
                deltas.append(ToolCallDelta(index=self.opened - 1, function=FunctionCallDelta(arguments=piece)))
            if end is None:
                self._at = len(self._text)
                return deltas
            self._at, self._arguments = end, None


class ContentFilter:
    """Streams an `auto` answer's text while it may be content, and holds back from the first `<tool_call>`
    (and any tail that could still become one), so a call never reaches the client as text."""

    def __init__(self) -> None:
        self._text = ""
        self._sent = 0
        self.calling = False

    def feed(self, delta: str) -> str:
        self._text += delta
        if self.calling:
            return ""
        at = self._text.find(CALL_OPEN)
        if at != -1:
            self.calling = True
            return self._take(at)
        keep = next((n for n in range(min(len(CALL_OPEN) - 1, len(self._text)), 0, -1)
                     if CALL_OPEN.startswith(self._text[-n:])), 0)
        return self._take(len(self._text) - keep)

    def _take(self, until: int) -> str:
        delta = self._text[self._sent:until]
        self._sent = max(self._sent, until)
        return delta

    @property
    def held(self) -> str:
        """What was held back and not sent."""
        return self._text[self._sent:]


def _call(item: Any) -> ToolCall:
    if not isinstance(item, dict) or not isinstance(item["name"], str):
        raise TypeError("not a call")
    arguments = item.get("arguments", item.get("parameters", {}))
    return ToolCall(id=new_call_id(), function=FunctionCall(name=item["name"], arguments=json.dumps(arguments)))


def _arguments(text: str) -> Any:
    try:
        return json.loads(text)
    except ValueError:
        return text
