"""Text encoders, in one place: the query encoder every request routes with, the runtimes it runs on,
and the retriever encoders the server loads.

- `query`: `QueryEncoder`, a thread-safe batch encoder (mean-pooled, unit-length sentence vectors) that
  defines the vector space every routing policy scores in;
- `runtime`: what runs its forward pass, PyTorch or an ONNX Runtime export cached on disk;
- `pool`: the server's shared encoder (`shared_encoder`, from `EncoderConfig`) and the pool of retriever
  encoders (`EncoderPool`);
- `TextEmbedder` (here): what a retriever's index and the embeddings endpoint need from any encoder.
"""

from __future__ import annotations

from typing import Protocol

import torch


class TextEmbedder(Protocol):
    """A retriever's embedding model (the query encoder class satisfies it): unit vectors on `device`."""

    source: str
    dim: int
    device: torch.device

    def encode(self, texts: list[str]) -> torch.Tensor: ...

    def count_tokens(self, texts: list[str]) -> int: ...
