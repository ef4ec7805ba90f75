"""Proof that adapters leave the shared base model alone: a probe forward pass and a weight checksum.

At start the generalist's logits for a fixed short prompt are recorded. Every adapter load then runs one
pass with a row on the new adapter and a row on the generalist, through the same forward the batches
use: the adapter's row must be finite, and the generalist's row must match the recording. A mismatch
means the base model changed, which the adapter allowlist (`experts/adapters.py`) is there to make
impossible; the probe catches what the allowlist missed before the adapter is published, and `/health`
reports it. The checksum (BLAKE2b over every base parameter, the LoRA layers' own excluded) lets an
operator or a test verify the weights themselves; it reads them all, so it is on demand only.

Every method runs on the backend's model thread.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from typing import Any

import torch

from experts.backends.continuous_batching import BASE_ADAPTER
from experts.errors import AdapterRejected

PROBE_TEXT = "The capital of France is Paris. Two plus two is"
LOGIT_TOLERANCE = 1e-3  # batch composition moves float32 logits by ~1e-5; a changed weight by far more

Forward = Callable[..., Any]


class ModelProbe:
    def __init__(self, tokenizer: Any, forward: Forward, base: Callable[[], torch.nn.Module]) -> None:
        self._forward = forward
        self._base = base
        self._ids = torch.tensor([tokenizer(PROBE_TEXT)["input_ids"]])
        self._reference = self._logits([BASE_ADAPTER])[0]

    def _logits(self, adapters: list[str]) -> torch.Tensor:
        model = self._base()
        ids = self._ids.to(next(model.parameters()).device).expand(len(adapters), -1)
        out = self._forward(adapters, input_ids=ids, attention_mask=torch.ones_like(ids))
        return out.logits[:, -1].float().cpu()

    def check_adapter(self, key: str) -> None:
        """Raise `AdapterRejected` unless `key` yields finite logits and the generalist is unchanged."""
        adapter, generalist = self._logits([key, BASE_ADAPTER])
        if not bool(torch.isfinite(adapter).all()):
            raise AdapterRejected("the adapter's probe forward pass produced NaN or infinite logits")
        drift = self._drift(generalist)
        if drift > LOGIT_TOLERANCE:
            raise AdapterRejected(f"loading the adapter changed the base model's outputs (max logit drift {drift:.3g})")

    def base_problems(self) -> list[str]:
        """What is wrong with the base model now: empty when its probe logits match the recording."""
        try:
            logits = self._logits([BASE_ADAPTER])[0]
        except Exception as exc:  # the forward pass itself fails: report it, do not raise from /health
            return [f"the generalist's probe forward pass failed: {exc}"]
        drift = self._drift(logits)
        if drift > LOGIT_TOLERANCE:
            return [f"the generalist's probe logits moved by {drift:.3g} since start: base weights changed"]
        return []

    def _drift(self, generalist_logits: torch.Tensor) -> float:
        """Largest distance from the recording (infinite for NaN or infinite logits)."""
        if not bool(torch.isfinite(generalist_logits).all()):
            return float("inf")
        return float((generalist_logits - self._reference).abs().max())

    def base_checksum(self) -> str:
        """BLAKE2b of the base model's parameters by name, with LoRA layers seen through."""
        digest = hashlib.blake2b(digest_size=16)
        params = {name.replace(".base_layer", ""): p for name, p in self._base().named_parameters()
                  if "lora_" not in name}
        for name in sorted(params):
            digest.update(name.encode())
            digest.update(params[name].detach().contiguous().cpu().view(torch.uint8).numpy().tobytes())
        return digest.hexdigest()
