"""Seed experts: the YAML list registered on a fresh data directory (the demo experts, for example).

Seeding happens only while the registry has never changed (version 0), so an operator who removes a
seeded expert does not see it come back on the next restart.
"""

from __future__ import annotations

import logging
from pathlib import Path

import yaml

from experts.registry import ExpertRegistry
from experts.spec import ExpertSpec

log = logging.getLogger(__name__)


def read_seed_file(path: Path) -> list[ExpertSpec]:
    """Parse a seed file; `adapter_path` entries are relative to the file. Extra keys are ignored."""
    entries = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    specs = []
    for entry in entries.get("experts", []):
        specs.append(
            ExpertSpec(
                name=entry["name"],
                description=entry.get("description", ""),
                adapter_path=str((path.parent / entry["adapter_path"]).resolve()),
                examples=entry["examples"],
            )
        )
    return specs


async def seed_registry(registry: ExpertRegistry, path: Path | None) -> int:
    if path is None or registry.snapshot.version != 0:
        return 0
    specs = read_seed_file(path)
    for spec in specs:
        await registry.add(spec)
    log.info("registered %d seed experts from %s", len(specs), path)
    return len(specs)
