"""Model backends: the generation engines behind one small interface (`base.Backend`).

Heavy engines are imported lazily by `create_backend`, so importing this package costs nothing.
"""

from __future__ import annotations

from pathlib import Path

from experts.backends.base import Backend, GenerationChunk, GenerationRequest, SamplingParams

__all__ = ["Backend", "GenerationChunk", "GenerationRequest", "SamplingParams", "create_backend"]


def create_backend(kind: str, model_dir: Path, device: str, max_context: int) -> Backend:
    """Build the backend named in the settings. Blocking: loads the base model."""
    if kind == "transformers":
        from experts.backends.transformers_peft import TransformersBackend

        return TransformersBackend(model_dir=model_dir, device=device, max_context=max_context)
    if kind == "vllm":
        raise NotImplementedError("the vLLM backend is not implemented yet (tracked in issue 7)")
    raise ValueError(f"unknown backend {kind!r}; expected 'transformers' or 'vllm'")
