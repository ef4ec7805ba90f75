"""Model backends: the generation engines behind one small interface (`base.Backend`).

Heavy engines are imported lazily by `create_backend`, so importing this package costs nothing.
"""

from __future__ import annotations

from pathlib import Path

from experts.backends.base import Backend, GenerationChunk, GenerationRequest, SamplingParams

__all__ = ["Backend", "GenerationChunk", "GenerationRequest", "SamplingParams", "create_backend"]


def create_backend(
    kind: str, model_dir: Path, device: str, max_context: int, max_loras: int, max_cpu_loras: int, max_batch: int,
    max_lora_rank: int = 64, gpu_memory_utilization: float = 0.3, stacked_lora: bool = True,
    prefix_caching: bool = True,
) -> Backend:
    """Build the backend named in the settings. Blocking: loads the base model."""
    if kind == "transformers":
        from experts.backends.transformers_peft import TransformersBackend

        return TransformersBackend(model_dir, device, max_context, max_loras, max_cpu_loras, max_batch, stacked_lora,
                                   prefix_caching)
    if kind == "vllm":
        from experts.backends.vllm_engine import VLLMBackend

        return VLLMBackend(model_dir, device, max_context, max_loras, max_cpu_loras, max_batch, max_lora_rank,
                           gpu_memory_utilization)
    raise ValueError(f"unknown backend {kind!r}; expected 'transformers' or 'vllm'")
