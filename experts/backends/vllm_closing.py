"""The closing reserve of structured outputs (`structured.py`) as a vLLM logits processor, so a
constrained answer closes within `max_tokens` on vLLM as on the transformers backend.

vLLM applies the grammar's bitmask before its logits processors run, so the bonus added here can only
favour tokens the grammar allows (a forbidden token stays at -inf). The processor runs inside vLLM's
engine-core process and sees every request of the batch; it acts on those with structured outputs only.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
from transformers import AutoTokenizer
from vllm.v1.sample.logits_processor import BatchUpdate, LogitsProcessor
from vllm.v1.sample.logits_processor.builtin import process_dict_updates

from experts.backends.json_state import JsonStringState
from experts.backends.structured import ClosingTokens

if TYPE_CHECKING:
    from vllm import SamplingParams
    from vllm.config import VllmConfig


@dataclass
class _Row:
    max_tokens: int
    output: list[int]  # vLLM's own list of the request's output tokens, growing in place
    json: JsonStringState  # with the schema's shortest instance (SamplingParams.extra_args)
    scanned: int = 0


class ClosingReserve(LogitsProcessor):
    def __init__(self, vllm_config: VllmConfig, device: torch.device, is_pin_memory: bool) -> None:
        model = vllm_config.model_config
        tokenizer = AutoTokenizer.from_pretrained(model.tokenizer)
        self._tokens = ClosingTokens(tokenizer, model.get_vocab_size())
        self._device = device
        self._rows: dict[int, _Row] = {}

    def is_argmax_invariant(self) -> bool:
        return False  # it changes which token is best

    def update_state(self, batch_update: BatchUpdate | None) -> None:
        process_dict_updates(self._rows, batch_update, self._track)
        for row in self._rows.values():
            for token in row.output[row.scanned:]:
                if token < 0:  # a placeholder (asynchronous scheduling): its token comes in place later
                    break
                row.json.push(self._tokens.text(token))
                row.scanned += 1

    @staticmethod
    def _track(params: SamplingParams, _: Any, output: list[int]) -> _Row | None:
        if params.structured_outputs is None or params.max_tokens is None:
            return None
        shortest = (params.extra_args or {}).get("closing_shortest", "")
        return _Row(params.max_tokens, output, JsonStringState(shortest if isinstance(shortest, str) else ""))

    def apply(self, logits: torch.Tensor) -> torch.Tensor:
        for index, row in self._rows.items():
            bonus = self._tokens.bonus(row.json, row.max_tokens - len(row.output), row.max_tokens, self._device)
            if bonus is not None:
                logits[index] += bonus
        return logits
