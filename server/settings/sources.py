"""Where settings come from, each source brought to the grouped shape before they are merged: a YAML file
(paths relative to it), `SWITCHYARD_<GROUP>__<KEY>` environment variables, and the flat keys of earlier
releases (`max_loras: 4`, `SWITCHYARD_MAX_LORAS=4`), which keep working for one release with a warning
that names the new key."""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

from server.settings.groups import GROUPS

log = logging.getLogger("switchyard.settings")
ENV_PREFIX = "SWITCHYARD_"
# The flat key of earlier releases -> (group, key). Every field kept its name except the engine's kind.
FLAT_KEYS: dict[str, tuple[str, str]] = {
    **{name: (group, name) for group, cls in GROUPS.items() for name in cls.model_fields},
    "backend": ("backend", "kind"),
}
# Keys holding paths: a config file's relative paths are relative to the file.
_PATH_KEYS = {("server", "data_dir"), ("server", "model_cache_dir")}
_PATH_LIST_KEYS = {("server", "seed_experts"), ("security", "adapter_roots"), ("security", "document_roots"),
                   ("security", "encoder_roots")}


def grouped(values: Mapping[str, Any], origin: str) -> dict[str, Any]:
    """`values` in the grouped shape: a flat key of an earlier release moves into its group, with a warning.
    A string for `backend` is the old flat key (the engine's kind). Unknown top-level
    keys are left for validation to refuse."""
    out: dict[str, Any] = {}
    for key, value in values.items():
        if key in GROUPS and not (key == "backend" and isinstance(value, str)):
            _merge_into(out, key, dict(value) if isinstance(value, Mapping) else value)
            continue
        if key in FLAT_KEYS:
            group, name = FLAT_KEYS[key]
            log.warning("setting %r (%s) is deprecated and will be removed in the next release: use %s.%s "
                        "(%s)", key, origin, group, name, _spelling(origin, group, name))
            _merge_into(out, group, {name: value})
            continue
        out[key] = value
    return out


def _spelling(origin: str, group: str, name: str) -> str:
    if origin == "environment":
        return f"{ENV_PREFIX}{group.upper()}__{name.upper()}"
    return f"`{group}: {{{name}: ...}}`"


def _merge_into(out: dict[str, Any], group: str, values: Any) -> None:
    if isinstance(values, dict) and isinstance(out.get(group), dict):
        out[group] = {**out[group], **values}
    else:
        out[group] = values


def merged(*sources: Mapping[str, Any]) -> dict[str, Any]:
    """Grouped sources merged group by group, later ones winning key by key."""
    out: dict[str, Any] = {}
    for source in sources:
        for key, value in source.items():
            _merge_into(out, key, dict(value) if isinstance(value, Mapping) else value)
    return out


def file_values(config_file: Path) -> dict[str, Any]:
    """A YAML settings file, grouped, its relative paths made absolute against the file's folder."""
    loaded = yaml.safe_load(Path(config_file).read_text(encoding="utf-8")) or {}
    if not isinstance(loaded, dict):
        raise ValueError(f"{config_file} must hold a mapping of settings")
    values = grouped(loaded, f"in {config_file}")
    base = Path(config_file).resolve().parent
    for group, name in _PATH_KEYS | _PATH_LIST_KEYS:
        section = values.get(group)
        if not isinstance(section, dict) or section.get(name) is None:
            continue
        value = section[name]
        if (group, name) in _PATH_LIST_KEYS:
            paths = [value] if isinstance(value, str) else value
            section[name] = [str((base / p).resolve()) for p in paths] if isinstance(paths, list) else value
        elif isinstance(value, str):
            section[name] = str((base / value).resolve())
    return values


def environment_values(environ: Mapping[str, str]) -> dict[str, Any]:
    """`SWITCHYARD_<GROUP>__<KEY>[__<SUBKEY>]` variables, grouped. Lists and mappings are JSON
    (`SWITCHYARD_SECURITY__API_KEYS='["k1"]'`). Variables that name no group and no earlier flat key
    (SWITCHYARD_CONFIG, the client's SWITCHYARD_URL) are not settings and are left alone."""
    nested: dict[str, Any] = {}
    for name, raw in environ.items():
        if not name.startswith(ENV_PREFIX):
            continue
        path = name.removeprefix(ENV_PREFIX).lower().split("__")
        if path[0] not in GROUPS and path[0] not in FLAT_KEYS:
            continue
        target = nested
        for part in path[:-1]:
            target = target.setdefault(part, {})
            if not isinstance(target, dict):
                raise ValueError(f"{name} sets a key inside a value that is not a mapping")
        target[path[-1]] = _decoded(raw)
    return grouped(nested, "environment")


def _decoded(raw: str) -> Any:
    if raw.strip().startswith(("[", "{")):
        try:
            return json.loads(raw)
        except json.JSONDecodeError:
            return raw
    return raw
