"""Retriever encoders: loaded once per model and shared by every retriever that names it.

A retriever that names no encoder uses the server's query encoder. Any other must be the embedded one
or a local directory under `encoder_roots`, and is loaded from safetensors only; an encoder that cannot
load refuses the registration loudly, it never silently becomes a different model.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from pathlib import Path

from experts.adapters import resolve_within_roots
from experts.errors import EncoderRejected
from routers.encoder import EMBEDDED_ENCODER, QueryEncoder, resolve_encoder


class EncoderPool:
    def __init__(self, shared: QueryEncoder, roots: Sequence[Path], device: str) -> None:
        self.shared = shared
        self._roots = list(roots)
        self._device = device
        self._loaded: dict[str, QueryEncoder] = {str(Path(shared.source).resolve()): shared}
        self._lock = threading.Lock()

    def load(self, source: str | None) -> QueryEncoder:
        """The encoder for a retriever's `encoder` setting (blocking; call from a worker thread)."""
        if source is None:
            return self.shared
        if source == EMBEDDED_ENCODER:
            path = Path(resolve_encoder(source))
        else:
            path = resolve_within_roots(source, self._roots, what="encoder", error=EncoderRejected)
        key = str(path.resolve())
        with self._lock:
            if key not in self._loaded:
                if not (path / "config.json").is_file():
                    raise EncoderRejected(f"encoder {source!r}: no config.json in {path}")
                try:
                    self._loaded[key] = QueryEncoder(path, self._device, use_safetensors=True)
                except Exception as exc:  # transformers raises many types; all mean "cannot load"
                    raise EncoderRejected(f"encoder {source!r} could not be loaded: {exc}") from exc
            return self._loaded[key]
