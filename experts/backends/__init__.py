"""Model backends: the generation engines behind one small interface (`base.Backend`).

Heavy engines are imported lazily by `create_backend`, so importing this package costs nothing.
"""

from __future__ import annotations

from pathlib import Path

from experts.backends.base import Backend, GenerationChunk, GenerationRequest, SamplingParams

__all__ = ["Backend", "GenerationChunk", "GenerationRequest", "SamplingParams", "create_backend"]


def create_backend(
    kind: str, model_dir: Path, device: str, max_context: int, max_loras: int, max_cpu_loras: int, max_batch: int
) -> Backend:
    """Build the backend named in the settings. Blocking: loads the base model."""
    if kind == "transformers":
        from experts.backends.transformers_peft import TransformersBackend

        return TransformersBackend(model_dir, device, max_context, max_loras, max_cpu_loras, max_batch)
    if kind == "vllm":
        raise NotImplementedError("the vLLM backend is not implemented yet (tracked in issue 7)")
    raise ValueError(f"unknown backend {kind!r}; expected 'transformers' or 'vllm'")
