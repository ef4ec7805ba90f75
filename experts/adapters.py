"""Safe adapter loading: where an adapter may come from and whether it fits the base model.

Everything here runs before a single weight reaches the model, so a refusal leaves the model and the
registry untouched. Only safetensors are read (never pickled `.bin` files), only from allowed roots
(symlinks and `..` resolved first), and every LoRA tensor is checked against the base module it targets.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from safetensors import safe_open
from torch import nn

from experts.errors import AdapterRejected

ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = "adapter_model.safetensors"
PICKLED_WEIGHTS = ("adapter_model.bin", "adapter_model.pt", "adapter_model.pth")


@dataclass(frozen=True)
class AdapterFiles:
    """A checked adapter directory: resolved path, its rank, and the modules it targets."""

    directory: Path
    rank: int
    target_modules: tuple[str, ...]


def resolve_within_roots(raw_path: str, allowed_roots: Sequence[Path], what: str = "adapter",
                         error: type[Exception] = AdapterRejected) -> Path:
    """Resolve `raw_path` and insist it lies under one of `allowed_roots` (after resolving those too)."""
    path = Path(raw_path).expanduser().resolve()
    for root in allowed_roots:
        resolved_root = Path(root).expanduser().resolve()
        if path == resolved_root or resolved_root in path.parents:
            return path
    roots = ", ".join(str(Path(r).expanduser().resolve()) for r in allowed_roots) or "(none configured)"
    raise error(f"{what} path {raw_path!r} is outside the allowed {what} roots: {roots}")


def check_adapter_files(directory: Path, max_rank: int) -> AdapterFiles:
    """Check that `directory` holds a LoRA adapter in safetensors format with an acceptable rank."""
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
    if config.get("peft_type") != "LORA":
        raise AdapterRejected(f"only LoRA adapters are supported, got peft_type={config.get('peft_type')!r}")
    rank = config.get("r")
    if not isinstance(rank, int) or rank < 1:
        raise AdapterRejected(f"adapter rank r={rank!r} is not a positive integer")
    if rank > max_rank:
        raise AdapterRejected(f"adapter rank {rank} exceeds the configured maximum of {max_rank}")
    targets = config.get("target_modules") or []
    if isinstance(targets, str):
        targets = [targets]
    return AdapterFiles(directory=directory, rank=rank, target_modules=tuple(sorted(targets)))


def check_fits_model(files: AdapterFiles, model: nn.Module) -> None:
    """Check every LoRA tensor's target module exists in `model` and the shapes match it.

    Reading only the safetensors header keeps this cheap, and catching a mismatch here (instead of in
    PEFT's loader) means the model is never left with a half-injected adapter.
    """
    modules = dict(model.named_modules())
    try:
        with safe_open(str(files.directory / ADAPTER_WEIGHTS), framework="pt") as weights:
            keys = list(weights.keys())
            if not keys:
                raise AdapterRejected("adapter weights file holds no tensors")
            for key in keys:
                _check_tensor(key, tuple(weights.get_slice(key).get_shape()), modules)
    except AdapterRejected:
        raise
    except Exception as exc:  # safetensors raises its own error types for corrupt headers
        raise AdapterRejected(f"adapter weights could not be read: {exc}") from exc


def _check_tensor(key: str, shape: tuple[int, ...], modules: dict[str, nn.Module]) -> None:
    """Check one saved LoRA tensor (e.g. `base_model.model.x.q_proj.lora_A.weight`) against its module."""
    for part in ("lora_A", "lora_B", "lora_embedding_A", "lora_embedding_B"):
        marker = f".{part}."
        if marker in key:
            module_path = key.split(marker)[0].removeprefix("base_model.model.")
            break
    else:
        return  # not a LoRA matrix (e.g. a saved bias); PEFT validates the rest
    module = modules.get(module_path)
    if module is None:
        raise AdapterRejected(f"adapter targets module {module_path!r}, which the base model does not have")
    module = getattr(module, "base_layer", module)  # a layer already wrapped by another loaded adapter
    if not isinstance(module, nn.Linear):
        return
    rank_axis_ok = (
        (part == "lora_A" and len(shape) == 2 and shape[1] == module.in_features)
        or (part == "lora_B" and len(shape) == 2 and shape[0] == module.out_features)
    )
    if not rank_axis_ok:
        expected = (
            f"[r, {module.in_features}]" if part == "lora_A" else f"[{module.out_features}, r]"
        )
        raise AdapterRejected(
            f"adapter tensor {key} has shape {list(shape)} but the base model's {module_path} "
            f"needs {expected}: the adapter was trained for a different base model"
        )
