"""The server's encoders: the shared query encoder (`shared_encoder`), and retriever encoders, loaded
once per model and shared by every retriever that names it (`EncoderPool`).

A retriever that names no encoder uses the server's query encoder. Any other must be the embedded one,
a local directory under `encoder_roots`, or a Hugging Face id already in the local Hugging Face cache
(nothing is downloaded at run time); it is loaded from safetensors only. An encoder that cannot load
refuses the registration loudly, it never silently becomes a different model.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from experts.adapters import resolve_within_roots
from experts.encoders.query import EMBEDDED_ENCODER, QueryEncoder, resolve_encoder
from experts.errors import EncoderRejected


@dataclass(frozen=True)
class EncoderConfig:
    """How the shared query encoder is built; the server's settings give it (`Settings.encoder_config()`)."""

    model: str  # 'embedded:...', a Hugging Face id in the local cache, or a directory
    runtime: str  # "torch" or "onnx"
    int8: bool
    cache_dir: Path  # where the ONNX export is cached
    max_tokens: int = 256


def shared_encoder(config: EncoderConfig, device: str, bulk: bool = False) -> QueryEncoder:
    """The query encoder every request routes with (and retrievers that name none embed with); with
    `bulk`, its twin for the bulk lane (server/runtime/lanes.py): one ONNX Runtime thread, no memory arena."""
    return QueryEncoder(resolve_encoder(config.model), device, config.max_tokens, config.int8,
                        runtime=config.runtime, cache_dir=config.cache_dir, memory_arena=not bulk,
                        threads=1 if bulk else None)


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
        elif _looks_like_hub_id(source):
            path = _from_hub_cache(source)
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


def _looks_like_hub_id(source: str) -> bool:
    """`owner/name` with no path syntax: a Hugging Face id rather than a directory."""
    parts = source.split("/")
    return len(parts) == 2 and all(parts) and not source.startswith((".", "~")) and not Path(source).exists()


def _from_hub_cache(repo_id: str) -> Path:
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import LocalEntryNotFoundError

    try:
        return Path(snapshot_download(repo_id, local_files_only=True))
    except (LocalEntryNotFoundError, ValueError, OSError) as exc:
        raise EncoderRejected(f"encoder {repo_id!r} is not in the local Hugging Face cache and this server does "
                              "not download models; put it in a directory under encoder_roots") from exc
