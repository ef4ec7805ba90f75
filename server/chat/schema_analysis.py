"""What a `response_format` schema costs, judged before it costs anything.

A client's schema drives three pieces of work: the grammar the engine compiles, the integer bounds we add
(`structured.py`), and the schema's shortest instance, which sizes the closing reserve. Each of them once
ran without a bound: a self-referential `$ref` compiled to a grammar that allows no token, a recursive
`anyOf` made the shortest instance cost k^depth, three nested arrays of `minItems` 512 built a
134-million-element instance, and 250 nested objects overflowed the recursion. So, in this order:

1. `check_shape` walks the schema without recursion: nesting depth, every count an integer and within
   `MAX_SCHEMA_COUNT`, and a bounded number of nodes.
2. `shortest_instance` finds the length of the shortest instance as a shortest derivation in a grammar
   (Knuth's generalisation of Dijkstra's algorithm): every subschema is a node whose length is the least
   over its alternatives (`anyOf`, `oneOf`) or a sum over its parts (objects, arrays), each node is settled
   once, so `$ref` cycles cost nothing extra and a node that never settles has no finite instance (the
   schema is refused). Lengths over `MAX_INSTANCE_CHARS`, more than any answer could hold, are never
   expanded. The text is written only at the end, from the choices made.

Every step checks a deadline (`SCHEMA_SECONDS`), and the caller runs the whole analysis off the event
loop, so no schema can hold the loop or a thread for long.
"""

from __future__ import annotations

import heapq
import json
import math
import time
from dataclasses import dataclass, field
from typing import Any

# Grammar size grows with repetition counts (a minLength of 100,000 took xgrammar 1.2 s to compile here),
# and no answer within the token limit could use more: larger counts are refused.
MAX_SCHEMA_COUNT = 4096
COUNT_KEYWORDS = ("minLength", "maxLength", "minItems", "maxItems", "minProperties", "maxProperties")
# JSON nesting of the schema document (an object property costs two levels: `properties`, then the
# property's schema): about 30 levels of nested objects, three times OpenAI's documented limit of 10.
MAX_SCHEMA_DEPTH = 64
MAX_SCHEMA_NODES = 20_000  # dicts and lists; a 64 KB schema has fewer
# The shortest instance must fit an answer: max_tokens is capped by the server (1,024 by default, at most
# the context), and a JSON token rarely spans more than a few characters.
MAX_INSTANCE_CHARS = 32 * 1024
SCHEMA_SECONDS = 2.0  # the time any one schema's analysis may take
_COMPACT = {"separators": (",", ":"), "ensure_ascii": False}


class SchemaProblem(ValueError):
    """A schema refused before compilation; `code` is the OpenAI-shaped error code."""

    def __init__(self, message: str, code: str) -> None:
        super().__init__(message)
        self.code = code


class _Deadline:
    def __init__(self, seconds: float) -> None:
        self._at = time.monotonic() + seconds
        self._calls = 0

    def check(self) -> None:
        self._calls += 1
        if self._calls % 256 == 0 and time.monotonic() > self._at:
            raise SchemaProblem(f"the schema took more than {SCHEMA_SECONDS:g} s to analyse", "schema_too_large")


# Where a schema holds other schemas by name (their keys are names, not keywords), or plain data (whose keys
# and values are not keywords either): a property called "minItems" is no count.
_NAMED_SCHEMAS = ("properties", "patternProperties", "$defs", "definitions", "dependentSchemas")
_DATA = ("const", "enum", "default", "examples", "required", "type")


def check_shape(schema: Any, seconds: float = SCHEMA_SECONDS) -> None:
    """Depth, node count and counts of `schema`, checked iteratively (no recursion, whatever the depth).
    Counts are read where they are keywords: in schemas, not in property names or data."""
    deadline = _Deadline(seconds)
    stack: list[tuple[Any, int, str]] = [(schema, 1, "schema")]  # (node, depth, what it is)
    nodes = 0
    while stack:
        node, depth, role = stack.pop()
        deadline.check()
        if not isinstance(node, dict | list):
            continue
        nodes += 1
        if depth > MAX_SCHEMA_DEPTH:
            raise SchemaProblem(f"the schema is nested deeper than {MAX_SCHEMA_DEPTH} levels", "schema_too_large")
        if nodes > MAX_SCHEMA_NODES:
            raise SchemaProblem(f"the schema has more than {MAX_SCHEMA_NODES} objects and arrays", "schema_too_large")
        if isinstance(node, list):  # a list of schemas (anyOf, ...), or of data
            stack.extend((value, depth + 1, "data" if role == "data" else "schema") for value in node)
            continue
        if role in ("data", "names"):  # a property named "minItems" is no count, nor is a key of a const
            stack.extend((value, depth + 1, "data" if role == "data" else "schema") for value in node.values())
            continue
        for key in COUNT_KEYWORDS:
            if key in node:
                count_of(node, key)
        for key, value in node.items():
            stack.append((value, depth + 1, "names" if key in _NAMED_SCHEMAS else "data" if key in _DATA
                          else "schema"))


def count_of(node: dict[str, Any], key: str) -> int:
    """`node[key]` as a count: a non-negative integer (3.0 counts as 3) within `MAX_SCHEMA_COUNT`; 0 when
    absent. Strings, booleans and fractions are refused: xgrammar or `int()` would read some of them."""
    value = node.get(key, 0)
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise SchemaProblem(f"{key} must be a non-negative integer, got {json.dumps(value)[:40]}", "invalid_schema")
    if isinstance(value, float) and math.isfinite(value) and not value.is_integer():
        raise SchemaProblem(f"{key} must be a non-negative integer, got {value}", "invalid_schema")
    if value < 0:
        raise SchemaProblem(f"{key} must be a non-negative integer, got {value}", "invalid_schema")
    if not value <= MAX_SCHEMA_COUNT:  # inf and nan too
        raise SchemaProblem(f"the schema's lengths and counts ({', '.join(COUNT_KEYWORDS)}) must be at most "
                            f"{MAX_SCHEMA_COUNT}", "schema_too_large")
    return int(value)


@dataclass
class _Node:
    """One subschema in the derivation graph. `parts` is a template: groups of literal text and child node
    ids, each group written `times` times in a row; for an alternative (`choices`), the least child wins."""

    text: str | None = None  # a leaf's whole instance
    parts: list[tuple[tuple[str | int, ...], int]] = field(default_factory=list)

    def children(self) -> set[int]:
        if self.parts:
            return {item for group, _ in self.parts for item in group if isinstance(item, int)}
        return set(self.choices)

    def total(self, length: list[float]) -> float:
        """The template's length, given each child's."""
        return sum(times * sum(len(item) if isinstance(item, str) else length[item] for item in group)
                   for group, times in self.parts)
    choices: list[int] = field(default_factory=list)


class _Graph:
    """Subschemas as nodes, keyed by identity (a `$ref` points at the same dict wherever it is used)."""

    def __init__(self, root: Any, deadline: _Deadline) -> None:
        self.root = root
        self.nodes: list[_Node] = []
        self._ids: dict[int, int] = {}
        self._deadline = deadline
        self._pending: list[tuple[int, Any]] = []

    def build(self) -> int:
        top = self._node_of(self.root)
        while self._pending:
            self._deadline.check()
            index, schema = self._pending.pop()
            self.nodes[index] = self._expand(schema)
        return top

    def _node_of(self, schema: Any) -> int:
        key = id(schema)
        if key not in self._ids:
            self._ids[key] = len(self.nodes)
            self.nodes.append(_Node())
            self._pending.append((self._ids[key], schema))
        return self._ids[key]

    def _resolve(self, ref: str) -> Any:
        target: Any = self.root
        for part in ref[2:].split("/") if ref != "#" else []:
            part = part.replace("~1", "/").replace("~0", "~")
            if isinstance(target, dict):
                target = target.get(part, {})
            elif isinstance(target, list) and part.isdigit() and int(part) < len(target):
                target = target[int(part)]
            else:
                target = {}
        return target

    def _expand(self, schema: Any) -> _Node:
        """The node of one subschema, in the precedence the grammar writes it."""
        if not isinstance(schema, dict):
            return _Node(text="null")
        ref = schema.get("$ref")
        if isinstance(ref, str) and (ref == "#" or ref.startswith("#/")):
            return _Node(choices=[self._node_of(self._resolve(ref))])
        if "const" in schema:
            return _Node(text=json.dumps(schema["const"], **_COMPACT))
        if isinstance(schema.get("enum"), list) and schema["enum"]:
            return _Node(text=min((json.dumps(v, **_COMPACT) for v in schema["enum"]), key=len))
        for key in ("anyOf", "oneOf", "allOf"):
            options = schema.get(key)
            if isinstance(options, list) and options:
                chosen = options[:1] if key == "allOf" else options  # allOf: an estimate, as before
                return _Node(choices=[self._node_of(option) for option in chosen])
        kind = schema.get("type", "object" if "properties" in schema else None)
        if isinstance(kind, list):
            kind = "null" if "null" in kind else kind[0] if kind else None
        if kind == "object":
            properties = schema.get("properties") if isinstance(schema.get("properties"), dict) else {}
            required = [name for name in dict.fromkeys(schema.get("required") or []) if isinstance(name, str)] \
                if isinstance(schema.get("required"), list) else []
            parts: list[tuple[tuple[str | int, ...], int]] = [(("{",), 1)]
            for i, name in enumerate(required):
                key = ("," if i else "") + json.dumps(name, **_COMPACT) + ":"
                parts.append(((key, self._node_of(properties.get(name, {}))), 1))
            return _Node(parts=[*parts, (("}",), 1)])
        if kind == "array":
            items = count_of(schema, "minItems")
            if items == 0:
                return _Node(text="[]")
            item = self._node_of(schema.get("items", {}))
            return _Node(parts=[(("[", item), 1), ((",", item), items - 1), (("]",), 1)])
        if kind == "string":
            return _Node(text='"' + "a" * count_of(schema, "minLength") + '"')
        if kind in ("integer", "number"):
            return _Node(text="0")
        if kind == "boolean":
            return _Node(text="false")
        return _Node(text="null")


def shortest_instance(schema: Any, seconds: float = SCHEMA_SECONDS, limit: int = MAX_INSTANCE_CHARS) -> str:
    """The compact JSON text of a short instance of `schema` (as the grammar writes it: every required key,
    the least of each value). An estimate where the schema is beyond these rules (patterns, formats): it
    sizes a reserve only. `SchemaProblem` when no finite instance exists or the shortest is over `limit`."""
    deadline = _Deadline(seconds)
    graph = _Graph(schema, deadline)
    root = graph.build()
    nodes = graph.nodes
    parents: list[set[int]] = [set() for _ in nodes]
    waiting = [0] * len(nodes)  # children not settled yet (parts only)
    for index, node in enumerate(nodes):
        children = node.children()
        for child in children:
            parents[child].add(index)
        waiting[index] = len(children) if node.parts else 0
    length = [math.inf] * len(nodes)
    choice = [-1] * len(nodes)
    settled = [False] * len(nodes)
    heap: list[tuple[float, int]] = []
    over_limit = False
    for index, node in enumerate(nodes):
        if node.text is not None or (node.parts and not waiting[index]):  # leaves, and objects of no required key
            length[index] = len(node.text) if node.text is not None else node.total(length)
            heapq.heappush(heap, (length[index], index))
    while heap:
        deadline.check()
        value, index = heapq.heappop(heap)
        if settled[index] or value > length[index]:
            continue
        settled[index] = True
        for parent in parents[index]:
            node = nodes[parent]
            if settled[parent]:
                continue
            if node.choices:
                if value < length[parent]:
                    length[parent], choice[parent] = value, index
                    heapq.heappush(heap, (value, parent))
                continue
            waiting[parent] -= 1
            if waiting[parent] == 0:
                total = node.total(length)
                if total > limit:
                    over_limit = True
                    continue
                length[parent] = total
                heapq.heappush(heap, (total, parent))
    if not settled[root] or length[root] > limit:
        if over_limit or math.isfinite(length[root]):
            raise SchemaProblem(f"the schema's shortest instance is longer than {limit} characters, more than "
                                "any answer can hold", "schema_too_large")
        raise SchemaProblem("the schema has no finite instance (every path through its $ref or anyOf recurses)",
                            "invalid_schema")
    return _write(nodes, choice, root, deadline)


def _write(nodes: list[_Node], choice: list[int], root: int, deadline: _Deadline) -> str:
    """The instance's text, from the settled choices; iterative (an instance may nest deeply)."""
    out: list[str] = []
    stack: list[str | int] = [root]
    while stack:
        deadline.check()
        item = stack.pop()
        if isinstance(item, str):
            out.append(item)
            continue
        node = nodes[item]
        if node.text is not None:
            out.append(node.text)
        elif node.choices:
            stack.append(choice[item])
        else:
            for group, times in reversed(node.parts):
                stack.extend(list(reversed(group)) * times)
    return "".join(out)
