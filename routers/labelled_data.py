"""Labelled routing data, the format `switchyard eval`, `switchyard calibrate` and the console share.

JSONL (`{"text": ..., "label": ...}` per line) or CSV with `text,label` columns. The label is an expert
name, or `oos` / `out_of_scope` / `generalist` for a query the generalist should answer. Conversations
are JSONL too, one per line, in the format of `../shared/data/sgd` (`{"turns": [...]}`, a `domain` on
each user turn): every user turn becomes a case routed with the conversation up to it.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from routers.conversation import ASSISTANT_CHARS, Turn
from routers.evaluation import OUT_OF_SCOPE

GENERALIST_LABEL = "generalist"  # the label (in data, feedback and calibration) for "no expert should answer"
OOS_LABELS = frozenset({OUT_OF_SCOPE, "out_of_scope", GENERALIST_LABEL})


class LabelledDataError(ValueError):
    """The file is not labelled data; the message says which line and why."""


def parse_labelled(text: str, is_csv: bool) -> list[tuple[str, str]]:
    """(text, label) pairs; out-of-scope labels are normalised to `OUT_OF_SCOPE`."""
    rows: list[tuple[str, str]] = []
    if is_csv:
        reader = csv.DictReader(io.StringIO(text))
        for number, row in enumerate(reader, start=2):
            rows.append(_row(row, f"row {number}"))
    else:
        for number, line in enumerate(text.splitlines(), start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except ValueError as exc:
                raise LabelledDataError(f"line {number} is not JSON: {exc}") from exc
            rows.append(_row(record, f"line {number}"))
    return [(t, OUT_OF_SCOPE if label in OOS_LABELS else label) for t, label in rows]


def read_labelled(path: Path) -> list[tuple[str, str]]:
    return parse_labelled(path.read_text(encoding="utf-8"), path.suffix.lower() == ".csv")


def _row(record: object, where: str) -> tuple[str, str]:
    if not isinstance(record, dict):
        raise LabelledDataError(f"{where} must be an object with 'text' and 'label'")
    text, label = record.get("text"), record.get("label")
    if not isinstance(text, str) or not text.strip() or not isinstance(label, str) or not label.strip():
        raise LabelledDataError(f"{where} needs a non-empty 'text' and 'label'")
    return text, label.strip()


@dataclass(frozen=True)
class LabelledTurn:
    """One labelled routing case: the conversation so far, ending with the labelled user turn (one turn
    for a plain query), the label, and the kind of turn: `query` (a labelled query), `opening`,
    `follow-up` (same label as the previous user turn) or `switch` (another label)."""

    turns: tuple[Turn, ...]
    label: str
    kind: str


def is_conversation_data(text: str) -> bool:
    """JSONL whose first record has `turns`: conversations in the format of `../shared/data/sgd`."""
    for line in text.splitlines():
        if line.strip():
            try:
                record = json.loads(line)
            except ValueError:
                return False
            return isinstance(record, dict) and "turns" in record
    return False


def parse_conversations(text: str) -> list[LabelledTurn]:
    """Every labelled user turn of a conversation JSONL file (see `conversation_cases`)."""
    records = []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            records.append(json.loads(line))
        except ValueError as exc:
            raise LabelledDataError(f"line {number} is not JSON: {exc}") from exc
    return conversation_cases(records)


def conversation_cases(records: list[object]) -> list[LabelledTurn]:
    """Every labelled user turn of every conversation, each with the user turns up to it.

    A conversation is `{"turns": [{"role": "user"|"assistant", "content": ..., "domain": ...}, ...]}`; user
    turns need a `domain` (the expert that should answer, or an out-of-scope label). Turns are read as
    on the serving path (`server.chat.conversation.conversation_turns`): user and assistant turns, the latter
    cut to their opening.
    """
    out: list[LabelledTurn] = []
    for number, record in enumerate(records, start=1):
        turns = record.get("turns") if isinstance(record, dict) else None
        if not isinstance(turns, list) or not turns:
            raise LabelledDataError(f"conversation {number} needs a non-empty 'turns' list")
        so_far: list[Turn] = []
        previous: str | None = None
        for position, turn in enumerate(turns, start=1):
            if not isinstance(turn, dict) or not isinstance(turn.get("content"), str):
                raise LabelledDataError(f"conversation {number}, turn {position} needs a 'role' and a text "
                                        "'content'")
            if turn.get("role") == "assistant" and turn["content"].strip():
                so_far.append(Turn(turn["content"][:ASSISTANT_CHARS], assistant=True))
            if turn.get("role") != "user" or not turn["content"].strip():
                continue
            label = turn.get("domain")
            if not isinstance(label, str) or not label.strip():
                raise LabelledDataError(f"conversation {number}, turn {position}: a user turn needs a 'domain'")
            label = OUT_OF_SCOPE if label.strip() in OOS_LABELS else label.strip()
            so_far.append(Turn(turn["content"]))
            kind = turn_kind(previous, label)
            previous = label
            out.append(LabelledTurn(tuple(so_far), label, kind))
    return out


def turn_kind(previous: str | None, label: str) -> str:
    """`opening` (no user turn before), `follow-up` (the previous user turn's label) or `switch`."""
    return "opening" if previous is None else ("follow-up" if label == previous else "switch")


def parse_labelled_turns(text: str, is_csv: bool) -> list[LabelledTurn]:
    """Labelled queries or conversations, told apart by their first record."""
    if not is_csv and is_conversation_data(text):
        return parse_conversations(text)
    return [LabelledTurn((Turn(t),), label, "query") for t, label in parse_labelled(text, is_csv)]


def read_labelled_turns(path: Path) -> list[LabelledTurn]:
    return parse_labelled_turns(path.read_text(encoding="utf-8"), path.suffix.lower() == ".csv")


TURN_KINDS = ("opening", "follow-up", "switch")


def resolve_labels(cases: Sequence[LabelledTurn], experts: set[str]) -> tuple[list[str], list[str]]:
    """Each case's label, and the domains a conversation names that no expert has (mapped to out of scope).

    A conversation's domain names its expert case-insensitively (expert names are lower case): SGD's
    `RentalCars` is the expert `rentalcars`."""
    conversations = any(c.kind != "query" for c in cases)
    if not conversations:
        return [c.label for c in cases], []

    def expert_of(label: str) -> str | None:
        return label if label in experts else label.lower() if label.lower() in experts else None

    unknown = sorted({c.label for c in cases if expert_of(c.label) is None and c.label != OUT_OF_SCOPE})
    return [expert_of(c.label) or OUT_OF_SCOPE for c in cases], unknown


def by_turn_kind(cases: Sequence[LabelledTurn], truth: Sequence[str], predicted: Sequence[str]) -> dict[str, Any]:
    """In-scope accuracy (fallback counted wrong) per kind of conversation turn."""
    out: dict[str, Any] = {}
    for kind in TURN_KINDS:
        rows = [(t, p) for c, t, p in zip(cases, truth, predicted, strict=True)
                if c.kind == kind and t != OUT_OF_SCOPE]
        out[kind] = {"n": len(rows), "accuracy": sum(t == p for t, p in rows) / len(rows) if rows else None}
    return out
