"""What an adapter's `adapter_config.json` may say: an allowlist, checked before any weight is read.

PEFT acts on many config keys while it loads an adapter, and several of them write into the base model
or change its structure: `modules_to_save` and `bias` save (and so load) base weights,
`layer_replication` duplicates decoder layers, `init_lora_weights` variants such as `olora` and `pissa`
rewrite the base weights they decompose, `trainable_token_indices` patches the embedding matrix. A key
that the server does not understand is therefore refused unless it holds its off value (null, false, an
empty collection): the safe direction when PEFT adds keys. What is left describes plain LoRA on linear
layers, which adds a delta beside a base layer and never touches it.

The result (`TargetRule`) says which base modules the adapter must cover and at what rank, so the
tensor check (`adapters.py`) can insist on exactly those tensors.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, TypeVar

from experts.errors import AdapterRejected

T = TypeVar("T")

# Keys whose value is read and checked below.
_CHECKED = {"peft_type", "r", "lora_alpha", "lora_dropout", "target_modules", "exclude_modules", "rank_pattern",
            "alpha_pattern", "layers_to_transform", "init_lora_weights", "bias", "use_rslora"}
# Keys with no effect on the loaded weights or the forward pass (bookkeeping, or sub-settings of a
# feature that is off), accepted with any value.
_INERT = {"task_type", "auto_mapping", "peft_version", "base_model_name_or_path", "revision", "inference_mode",
          "megatron_core", "qalora_group_size", "runtime_config"}
_INIT_OK = (True, False, "gaussian")  # initialisations that touch only the LoRA matrices
_LAYER_INDEX = re.compile(r".*\.[^.]*\.(\d+)\.")  # PEFT's default: "model.layers.<i>.<...>"
_QUANTIFIED_GROUP = re.compile(r"\)\s*[*+?{]")  # nested quantifiers: a regex that can backtrack for ever
ALL_LINEAR = "all-linear"


@dataclass(frozen=True)
class TargetRule:
    """Which base modules an adapter targets and the rank of each, as PEFT would read its config."""

    rank: int
    target_modules: str | tuple[str, ...]
    exclude_modules: str | tuple[str, ...] = ()
    layers: frozenset[int] | None = None
    rank_pattern: tuple[tuple[str, int], ...] = ()
    alpha: float = 8.0
    alpha_pattern: tuple[tuple[str, float], ...] = ()
    rslora: bool = False

    def selects(self, module: str) -> bool:
        """Whether PEFT would put a LoRA layer on the base module named `module`."""
        if _matches(self.exclude_modules, module):
            return False
        if self.target_modules == ALL_LINEAR:
            chosen = module.rsplit(".", 1)[-1] != "lm_head"
        else:
            chosen = _matches(self.target_modules, module)
        if chosen and self.layers is not None:
            found = _LAYER_INDEX.match(module)
            chosen = found is not None and int(found.group(1)) in self.layers
        return chosen

    def rank_of(self, module: str) -> int:
        return _by_pattern(self.rank_pattern, module, self.rank)

    def scaling_of(self, module: str) -> float:
        """The factor PEFT multiplies the module's B·A by: alpha / r (alpha / √r with rsLoRA)."""
        rank = self.rank_of(module)
        alpha = _by_pattern(self.alpha_pattern, module, self.alpha)
        return alpha / (math.sqrt(rank) if self.rslora else rank)

    def unknown_targets(self, modules: Iterable[str]) -> list[str]:
        """Listed target names that match none of `modules` (PEFT would skip them without a word)."""
        if isinstance(self.target_modules, str):
            return []
        names = list(modules)
        return [t for t in self.target_modules if not any(_matches((t,), name) for name in names)]

    def largest_rank(self) -> int:
        return max([self.rank, *(rank for _, rank in self.rank_pattern)])


def _by_pattern(patterns: tuple[tuple[str, T], ...], module: str, default: T) -> T:
    """PEFT's rank_pattern / alpha_pattern lookup: the first key matching the module name's end."""
    for pattern, value in patterns:
        if re.fullmatch(rf"(.*\.)?({pattern})", module):
            return value
    return default


def _matches(targets: str | tuple[str, ...], module: str) -> bool:
    if isinstance(targets, str):
        return re.fullmatch(targets, module) is not None
    return any(module == t or module.endswith("." + t) for t in targets)


def check_config(config: Any, max_rank: int) -> TargetRule:
    """Refuse anything but plain LoRA on linear layers within the rank limit; say exactly what and why."""
    if not isinstance(config, dict):
        raise AdapterRejected("adapter_config.json must hold a JSON object")
    if config.get("peft_type") != "LORA":
        raise AdapterRejected(f"only LoRA adapters are supported, got peft_type={config.get('peft_type')!r}")
    for key, value in config.items():
        if key in _CHECKED or key in _INERT or _is_off(value):
            continue
        raise AdapterRejected(f"adapter_config.json sets {key}={_short(value)}, which this server does not "
                              "support: it would change the base model's weights or structure, or its "
                              "effect is unknown")
    if config.get("bias", "none") != "none":
        raise AdapterRejected(f"bias={config['bias']!r} would load base-model biases; only 'none' is supported")
    if config.get("init_lora_weights", True) not in _INIT_OK:
        raise AdapterRejected(f"init_lora_weights={_short(config['init_lora_weights'])} rewrites base weights "
                              "or needs data at load time; only true, false and 'gaussian' are supported")
    if not isinstance(config.get("use_rslora", False), bool):
        raise AdapterRejected("use_rslora must be true or false")
    rank = _rank(config.get("r"), "r", max_rank)
    alpha = _number(config.get("lora_alpha", 8), "lora_alpha")
    dropout = _number(config.get("lora_dropout", 0.0), "lora_dropout")
    if not 0.0 <= dropout < 1.0:
        raise AdapterRejected(f"lora_dropout={dropout} must be in [0, 1)")
    pattern = _mapping(config.get("rank_pattern"), "rank_pattern")
    ranks = tuple((_regex(key, "rank_pattern"), _rank(value, f"rank_pattern[{key!r}]", max_rank))
                  for key, value in pattern.items())
    alphas = tuple((_regex(key, "alpha_pattern"), _number(value, f"alpha_pattern[{key!r}]"))
                   for key, value in _mapping(config.get("alpha_pattern"), "alpha_pattern").items())
    return TargetRule(rank=rank, target_modules=_targets(config.get("target_modules"), "target_modules", True),
                      exclude_modules=_targets(config.get("exclude_modules"), "exclude_modules", False),
                      layers=_layers(config.get("layers_to_transform")), rank_pattern=ranks, alpha=alpha,
                      alpha_pattern=alphas, rslora=bool(config.get("use_rslora", False)))


def _is_off(value: Any) -> bool:
    return value is None or value is False or (isinstance(value, list | dict | str) and not value)


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _rank(value: Any, what: str, max_rank: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise AdapterRejected(f"adapter rank {what}={_short(value)} is not a positive integer")
    if value > max_rank:
        raise AdapterRejected(f"adapter rank {what}={value} exceeds the configured maximum of {max_rank}")
    return value


def _number(value: Any, what: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise AdapterRejected(f"{what}={_short(value)} is not a finite number")
    return float(value)


def _mapping(value: Any, what: str) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise AdapterRejected(f"{what} must be an object")
    return value


def _regex(pattern: Any, what: str) -> str:
    """A module-name pattern PEFT will run as a regular expression: short, compilable, no nested
    quantifiers (a crafted pattern could otherwise backtrack for minutes on every module name)."""
    if not isinstance(pattern, str) or not pattern or len(pattern) > 200:
        raise AdapterRejected(f"{what}: module patterns must be non-empty strings of at most 200 characters")
    if _QUANTIFIED_GROUP.search(pattern):
        raise AdapterRejected(f"{what}: the pattern {_short(pattern)} repeats a group, which is not supported")
    try:
        re.compile(pattern)
    except re.error as exc:
        raise AdapterRejected(f"{what}: {_short(pattern)} is not a valid regular expression: {exc}") from exc
    return pattern


def _targets(value: Any, what: str, required: bool) -> str | tuple[str, ...]:
    if value is None or (isinstance(value, list) and not value):
        if required:
            raise AdapterRejected("adapter_config.json lists no target_modules")
        return ()
    if isinstance(value, str):
        return value if value == ALL_LINEAR else _regex(value, what)
    if isinstance(value, list) and all(isinstance(t, str) and t and len(t) <= 200 for t in value):
        return tuple(value)
    raise AdapterRejected(f"{what} must be a module name pattern or a list of module names")


def _layers(value: Any) -> frozenset[int] | None:
    if value is None:
        return None
    values = [value] if isinstance(value, int) and not isinstance(value, bool) else value
    if not isinstance(values, list) or not values or not all(
            isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in values):
        raise AdapterRejected("layers_to_transform must be a layer index or a list of them")
    return frozenset(values)
