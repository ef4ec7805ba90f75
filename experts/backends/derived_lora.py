"""A weighted mixture of LoRA adapters written as one ordinary LoRA adapter, for engines that take one
adapter per request (vLLM).

For every module, Σ wᵢ·sᵢ·Bᵢ·Aᵢ (sᵢ each component's alpha/r scaling) is B·A with A the components' A
matrices stacked ([Σr, in]) and B their B matrices side by side, each scaled by wᵢ·sᵢ ([out, Σr]): the
weighted sum exactly, at rank Σr, with no approximation (an SVD truncation would lose it). The derived
adapter's own scaling is 1 (alpha = r). Each component keeps its largest rank in every module (rows and
columns past a module's own rank are zero), so the derived rank is the same in every module; a module a
component does not target contributes zeros, which is what that component adds there.

`DerivedAdapters` is the bookkeeping: one derived adapter per (component keys, weights), built on first
use, shared by every request with that mixture, and dropped when a component leaves (its key is never
reused, so a replaced expert can never be served through a stale mixture) or when it is the least
recently used of too many.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from experts.adapters import ADAPTER_CONFIG, ADAPTER_WEIGHTS, AdapterFiles
from experts.backends.base import AdapterMix

_PREFIX = "base_model.model."


def derived_rank(components: Sequence[AdapterFiles]) -> int:
    """The rank of the derived adapter: the components' largest ranks, summed."""
    return sum(files.rank for files in components)


def write_derived_adapter(components: Sequence[tuple[AdapterFiles, float]], directory: Path) -> int:
    """Write the mixture of `components` ((files, weight) pairs) as a PEFT adapter in `directory`; returns
    its rank. Blocking: reads every component's weights (a few MB each)."""
    loaded = [(files, weight, load_file(str(files.directory / ADAPTER_WEIGHTS), device="cpu"))
              for files, weight in components]
    modules = sorted({key.removeprefix(_PREFIX).rsplit(".lora_", 1)[0] for _, _, weights in loaded
                      for key in weights})
    rank = derived_rank([files for files, _ in components])
    tensors: dict[str, torch.Tensor] = {}
    for module in modules:
        a_parts, b_parts = [], []
        shape = _module_shape(module, loaded)
        for files, weight, weights in loaded:
            a = weights.get(f"{_PREFIX}{module}.lora_A.weight")
            b = weights.get(f"{_PREFIX}{module}.lora_B.weight")
            padded_a = torch.zeros(files.rank, shape[1])
            padded_b = torch.zeros(shape[0], files.rank)
            if a is not None and b is not None:
                padded_a[: a.shape[0]] = a.float()
                padded_b[:, : b.shape[1]] = b.float() * (weight * files.targets.scaling_of(module))
            a_parts.append(padded_a)
            b_parts.append(padded_b)
        tensors[f"{_PREFIX}{module}.lora_A.weight"] = torch.cat(a_parts).contiguous()
        tensors[f"{_PREFIX}{module}.lora_B.weight"] = torch.cat(b_parts, dim=1).contiguous()
    directory.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(directory / ADAPTER_WEIGHTS))
    config = {"peft_type": "LORA", "task_type": "CAUSAL_LM", "r": rank, "lora_alpha": rank, "use_rslora": False,
              "lora_dropout": 0.0, "bias": "none", "target_modules": modules,
              "base_model_name_or_path": _base_name(components)}
    (directory / ADAPTER_CONFIG).write_text(json.dumps(config, indent=1), encoding="utf-8")
    return rank


def _module_shape(module: str, loaded: Sequence[tuple[AdapterFiles, float, dict[str, torch.Tensor]]]
                  ) -> tuple[int, int]:
    """(out, in) of a module, from any component that targets it."""
    for _, _, weights in loaded:
        a = weights.get(f"{_PREFIX}{module}.lora_A.weight")
        b = weights.get(f"{_PREFIX}{module}.lora_B.weight")
        if a is not None and b is not None:
            return int(b.shape[0]), int(a.shape[1])
    raise ValueError(f"no component holds both LoRA matrices of {module}")


def _base_name(components: Sequence[tuple[AdapterFiles, float]]) -> str | None:
    try:
        config = json.loads((components[0][0].directory / ADAPTER_CONFIG).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return config.get("base_model_name_or_path")


@dataclass
class DerivedAdapter:
    """One mixture's adapter on disk, and how many requests run on it now."""

    key: str
    directory: Path
    mixture: AdapterMix
    in_use: int = 0


class DerivedAdapters:
    """Derived adapters by mixture: built once, reused, and dropped with their components.

    The engine-specific loading and unloading stay with the caller; this class decides what exists, where
    its files are and what must go."""

    def __init__(self, max_entries: int = 16) -> None:
        self._root = Path(tempfile.mkdtemp(prefix="switchyard-mixtures-"))
        self._by_mixture: OrderedDict[AdapterMix, DerivedAdapter] = OrderedDict()
        self._max_entries = max_entries
        self._count = 0

    def get(self, mixture: AdapterMix) -> DerivedAdapter | None:
        entry = self._by_mixture.get(mixture)
        if entry is not None:
            self._by_mixture.move_to_end(mixture)
        return entry

    def new_directory(self) -> tuple[str, Path]:
        """A key never used before and an empty directory for a derived adapter's files."""
        self._count += 1
        key = f"mixture-{self._count}"
        return key, self._root / key

    def add(self, entry: DerivedAdapter) -> list[DerivedAdapter]:
        """Keep `entry`; returns the least recently used unused entries pushed out (to unload)."""
        self._by_mixture[entry.mixture] = entry
        excess = len(self._by_mixture) - self._max_entries
        idle = [e for e in self._by_mixture.values() if e.in_use == 0 and e is not entry][: max(0, excess)]
        return [self._drop(e) for e in idle]

    def with_component(self, key: str) -> list[DerivedAdapter]:
        """Forget every derived adapter that has `key` as a component; returns them (to unload)."""
        return [self._drop(e) for e in list(self._by_mixture.values()) if key in e.mixture.keys]

    def _drop(self, entry: DerivedAdapter) -> DerivedAdapter:
        self._by_mixture.pop(entry.mixture, None)
        shutil.rmtree(entry.directory, ignore_errors=True)
        return entry

    def close(self) -> None:
        shutil.rmtree(self._root, ignore_errors=True)
