"""Safe adapter loading: where an adapter may come from and whether it fits the base model.

Everything here runs before a single weight reaches the model, so a refusal leaves the model and the
registry untouched. Only safetensors are read (never pickled `.bin` files), only from allowed roots
(symlinks and `..` resolved first). The config passes an allowlist (`adapter_config.py`), and the weights
file may hold exactly the LoRA matrices that config implies for the base model: nothing PEFT could load
into the base's own weights gets through.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import safe_open
from torch import nn

from experts.adapter_config import TargetRule, check_config
from experts.errors import AdapterRejected

ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = "adapter_model.safetensors"
PICKLED_WEIGHTS = ("adapter_model.bin", "adapter_model.pt", "adapter_model.pth")


@dataclass(frozen=True)
class AdapterFiles:
    """A checked adapter directory: resolved path, its largest rank, and what its config targets."""

    directory: Path
    rank: int
    target_modules: tuple[str, ...]
    targets: TargetRule


def resolve_within_roots(raw_path: str, allowed_roots: Sequence[Path], what: str = "adapter",
                         error: type[Exception] = AdapterRejected) -> Path:
    """Resolve `raw_path` and insist it lies under one of `allowed_roots` (after resolving those too)."""
    if "\x00" in raw_path:
        raise error(f"{what} path holds a NUL byte")
    path = Path(raw_path).expanduser().resolve()
    for root in allowed_roots:
        resolved_root = Path(root).expanduser().resolve()
        if path == resolved_root or resolved_root in path.parents:
            return path
    roots = ", ".join(str(Path(r).expanduser().resolve()) for r in allowed_roots) or "(none configured)"
    raise error(f"{what} path {raw_path!r} is outside the allowed {what} roots: {roots}")


def check_adapter_files(directory: Path, max_rank: int) -> AdapterFiles:
    """Check that `directory` holds a plain LoRA adapter in safetensors format within the rank limit."""
    if not directory.is_dir():
        raise AdapterRejected(f"adapter directory {str(directory)!r} does not exist")
    config_path = directory / ADAPTER_CONFIG
    weights_path = directory / ADAPTER_WEIGHTS
    if not weights_path.is_file():
        if any((directory / name).exists() for name in PICKLED_WEIGHTS):
            raise AdapterRejected("adapter weights must be safetensors; pickled .bin/.pt files are refused")
        raise AdapterRejected(f"{ADAPTER_WEIGHTS} is missing from {str(directory)!r}")
    if not config_path.is_file():
        raise AdapterRejected(f"{ADAPTER_CONFIG} is missing from {str(directory)!r}")
    try:
        config = json.loads(config_path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise AdapterRejected(f"{ADAPTER_CONFIG} is not valid JSON: {exc}") from exc
    targets = check_config(config, max_rank)
    names = (targets.target_modules,) if isinstance(targets.target_modules, str) else targets.target_modules
    return AdapterFiles(directory=directory, rank=targets.largest_rank(), target_modules=tuple(sorted(names)),
                        targets=targets)


def check_fits_model(files: AdapterFiles, model: nn.Module) -> None:
    """Allow exactly the LoRA A and B matrices of the base's linear modules the config targets.

    Every tensor must be one of those, with the shape of its module and the rank the config gives it,
    in a float dtype, with finite values; every targeted module must have both its matrices; every
    listed target must exist in the base. Anything else (a base weight, a bias, an embedding, a module
    the config does not list) is refused here, before PEFT sees the file: PEFT would load it into the
    base model non-strictly, or leave a listed module without weights.
    """
    linear = _linear_modules(model)
    targets = files.targets
    expected = {name: layer for name, layer in linear.items() if targets.selects(name)}
    for target in targets.unknown_targets(linear):
        raise AdapterRejected(f"target module {target!r} is not a linear layer of the base model")
    if not expected:
        raise AdapterRejected("the adapter's target_modules select no linear layer of the base model")
    found: dict[str, set[str]] = {name: set() for name in expected}
    try:
        with safe_open(str(files.directory / ADAPTER_WEIGHTS), framework="pt") as weights:
            keys = list(weights.keys())
            if not keys:
                raise AdapterRejected("adapter weights file holds no tensors")
            for key in keys:
                module, part = _lora_key(key)
                if module not in expected:
                    why = "the config does not target" if module in linear else "is not a linear layer of the base"
                    raise AdapterRejected(f"adapter tensor {key} is for module {module!r}, which {why}")
                view = weights.get_slice(key)
                _check_shape(key, module, part, tuple(view.get_shape()), expected[module], targets.rank_of(module))
                if view.get_dtype() not in _FLOAT_DTYPES:
                    raise AdapterRejected(f"adapter tensor {key} has dtype {view.get_dtype()}; "
                                          f"expected one of {', '.join(sorted(_FLOAT_DTYPES))}")
                if not bool(torch.isfinite(weights.get_tensor(key)).all()):
                    raise AdapterRejected(f"adapter tensor {key} holds NaN or infinite values")
                found[module].add(part)
    except AdapterRejected:
        raise
    except Exception as exc:  # safetensors raises its own error types for corrupt headers
        raise AdapterRejected(f"adapter weights could not be read: {exc}") from exc
    missing = sorted(name for name, parts in found.items() if parts != {"A", "B"})
    if missing:
        more = f" and {len(missing) - 3} more" if len(missing) > 3 else ""
        raise AdapterRejected(f"the config targets {', '.join(missing[:3])}{more}, but the weights lack their "
                              "lora_A/lora_B matrices")


_FLOAT_DTYPES = {"F16", "BF16", "F32"}
_LORA_KEY = re.compile(r"base_model\.model\.(?P<module>[\w.]+)\.lora_(?P<part>[AB])\.weight")
_WRAPPER_PARTS = ("base_layer", "lora_A", "lora_B", "lora_dropout", "lora_embedding_A", "lora_embedding_B",
                  "lora_magnitude_vector")


def _linear_modules(model: nn.Module) -> dict[str, nn.Linear]:
    """The base model's linear layers by name, seen through LoRA layers other adapters already added."""
    out = {}
    for name, module in model.named_modules():
        if any(part in _WRAPPER_PARTS for part in name.split(".")):
            continue
        layer = getattr(module, "base_layer", module)
        if isinstance(layer, nn.Linear):
            out[name.removeprefix("base_model.model.")] = layer
    return out


def _lora_key(key: str) -> tuple[str, str]:
    match = _LORA_KEY.fullmatch(key)
    if match is None:
        raise AdapterRejected(f"adapter tensor {key!r} is not a LoRA matrix (base_model.model.<module>."
                              "lora_A.weight or .lora_B.weight); base weights, biases and embeddings are refused")
    return match.group("module"), match.group("part")


def _check_shape(key: str, module: str, part: str, shape: tuple[int, ...], layer: nn.Linear, rank: int) -> None:
    expected = (rank, layer.in_features) if part == "A" else (layer.out_features, rank)
    if shape != expected:
        raise AdapterRejected(
            f"adapter tensor {key} has shape {list(shape)} but the base model's {module} at rank {rank} "
            f"needs {list(expected)}: the adapter was trained for a different base model or rank"
        )
