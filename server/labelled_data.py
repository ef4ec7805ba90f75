"""Labelled routing data, the format `switchyard eval`, `switchyard calibrate` and the console share.

JSONL (`{"text": ..., "label": ...}` per line) or CSV with `text,label` columns. The label is an expert
name, or `oos` / `out_of_scope` / `generalist` for a query the generalist should answer.
"""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

from routers.evaluation import OUT_OF_SCOPE

OOS_LABELS = {"oos", "out_of_scope", "generalist"}


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
