"""Model backends: the generation engines behind one small interface (`base.Backend`).

Heavy engines are imported lazily by `create_backend`, so importing this package costs nothing.
"""

from __future__ import annotations

from pathlib import Path
from typing import Protocol

from experts.backends.base import Backend, GenerationChunk, GenerationRequest, SamplingParams

__all__ = ["Backend", "EngineConfig", "GenerationChunk", "GenerationRequest", "SamplingParams", "create_backend"]


class EngineConfig(Protocol):
    """What an engine is built from (server/settings/groups.py BackendSettings has these fields); a protocol,
    so this layer does not import the server's settings."""

    kind: str
    max_context_tokens: int
    max_loras: int
    max_cpu_loras: int
    max_batch_size: int
    max_adapter_rank: int
    stacked_lora: bool
    prefix_caching: bool
    gpu_memory_utilization: float


def create_backend(config: EngineConfig, model_dir: Path, device: str) -> Backend:
    """Build the backend `config.kind` names. Blocking: loads the base model."""
    if config.kind == "transformers":
        from experts.backends.transformers_peft import TransformersBackend

        return TransformersBackend(model_dir, device, config.max_context_tokens, config.max_loras,
                                   config.max_cpu_loras, config.max_batch_size, config.stacked_lora,
                                   config.prefix_caching)
    if config.kind == "vllm":
        from experts.backends.vllm_engine import VLLMBackend

        return VLLMBackend(model_dir, device, config.max_context_tokens, config.max_loras, config.max_cpu_loras,
                           config.max_batch_size, config.max_adapter_rank, config.gpu_memory_utilization)
    raise ValueError(f"unknown backend {config.kind!r}; expected 'transformers' or 'vllm'")
