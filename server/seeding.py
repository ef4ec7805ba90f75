"""Seed experts: the YAML list registered on a fresh data directory (the demo experts, for example).

Seeding happens only while the registry has never changed (version 0), so an operator who removes a
seeded expert does not see it come back on the next restart. Seeded retrievers are indexed in the
background like any other; a retriever whose documents are missing is logged and skipped.
"""

from __future__ import annotations

import logging
from pathlib import Path

import yaml

from experts.errors import ExpertError
from experts.registry import ExpertRegistry
from experts.spec import ExpertSpec
from server.retrieval.indexing import IndexingService

log = logging.getLogger(__name__)


def read_seed_file(path: Path) -> list[ExpertSpec]:
    """Parse a seed file; relative `adapter_path` and `documents_path` entries are relative to the file.
    Keys that are not part of an expert spec (held-out test queries, for instance) are ignored."""
    entries = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    specs = []
    for entry in entries.get("experts", []):
        fields = {k: v for k, v in entry.items() if k in ExpertSpec.model_fields}
        for key in ("adapter_path", "documents_path"):
            if key in fields:
                fields[key] = str((path.parent / fields[key]).resolve())
        specs.append(ExpertSpec(**fields))
    return specs


async def seed_registry(registry: ExpertRegistry, indexing: IndexingService, paths: list[Path]) -> int:
    if not paths or registry.snapshot.version != 0:
        return 0
    specs = [spec for path in paths for spec in read_seed_file(path)]
    for spec in specs:
        if spec.kind == "retriever":
            try:
                await indexing.create(spec, None, replace=False)
            except ExpertError as exc:
                log.warning("seed retriever %r skipped: %s", spec.name, exc)
        else:
            await registry.add(spec)
    log.info("registered %d seed experts from %s (retrievers index in the background)", len(specs),
             ", ".join(map(str, paths)))
    return len(specs)
