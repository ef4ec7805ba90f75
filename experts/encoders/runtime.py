"""What runs the encoder's forward pass: PyTorch eager, or ONNX Runtime on an exported copy.

The query encoder spends nearly all its time in six small transformer layers over a few hundred tokens,
which on two CPU cores is compute-bound. Measured here on all-MiniLM-L6-v2 with CLINC150 queries
(`bench/routing_throughput.py` has the current figures): ONNX Runtime runs the same fp32 graph faster
than eager PyTorch, most visibly for one query, where PyTorch's per-module Python overhead dominates; its
per-channel int8 weights (VNNI matmuls) are faster again and stay much closer to fp32 than PyTorch's
per-tensor dynamic quantisation.

Each runtime takes padded token arrays and returns the last hidden state as a float32 torch tensor; the
caller pools. The ONNX copy is exported once per encoder, runtime version and precision into a cache
directory, written to a temporary directory and renamed, so a crash never leaves a half-written model.
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import tempfile
import warnings
from pathlib import Path
from typing import Protocol

import torch

log = logging.getLogger(__name__)

RUNTIMES = ("torch", "onnx")


class EncoderRuntime(Protocol):
    """Runs the encoder on a padded batch. `call_overhead_tokens` tells the length bucketing what one
    extra call costs, in tokens of compute, so it splits a batch only where padding costs more."""

    call_overhead_tokens: int
    input_names: tuple[str, ...]
    hidden_size: int

    def hidden_states(self, batch: dict[str, torch.Tensor]) -> torch.Tensor: ...


class TorchRuntime:
    call_overhead_tokens = 64  # eager PyTorch pays ~5 ms of Python per call on this MiniLM

    def __init__(self, source: Path | str, device: torch.device, int8: bool,
                 use_safetensors: bool | None) -> None:
        from transformers import AutoModel

        model = AutoModel.from_pretrained(source, use_safetensors=use_safetensors).to(device).eval()
        self._model = _quantize_linear_int8(model) if int8 and device.type == "cpu" else model
        self.input_names = tuple(_accepted_inputs(model))
        self.hidden_size = int(model.config.hidden_size)

    def hidden_states(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        with torch.inference_mode():
            return self._model(**batch).last_hidden_state.float()


class OnnxRuntime:
    call_overhead_tokens = 32

    def __init__(self, source: Path | str, cache_dir: Path, int8: bool, threads: int | None = None,
                 memory_arena: bool = True) -> None:
        import onnxruntime as ort

        model_path, self.input_names, self.hidden_size = _exported(Path(source), cache_dir, int8)
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads or torch.get_num_threads()
        options.inter_op_num_threads = 1
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        # Idle ORT threads would otherwise spin on cores that the event loop and the LLM need.
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        # Without the arena (bulk encoders, server/runtime/lanes.py) the activations of a large batch go back to the
        # allocator, and the OS, instead of staying reserved for the next one.
        options.enable_cpu_mem_arena = memory_arena
        self._session = ort.InferenceSession(str(model_path), options, providers=["CPUExecutionProvider"])

    def hidden_states(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        feeds = {name: batch[name].numpy() for name in self.input_names}
        return torch.from_numpy(self._session.run(None, feeds)[0])


def _accepted_inputs(model: torch.nn.Module) -> list[str]:
    """The tokenizer outputs this model's forward takes (BERT wants token_type_ids, MPNet does not)."""
    import inspect

    accepted = inspect.signature(model.forward).parameters
    return [name for name in ("input_ids", "attention_mask", "token_type_ids") if name in accepted]


def _exported(source: Path, cache_dir: Path, int8: bool) -> tuple[Path, tuple[str, ...], int]:
    """The cached ONNX export of `source` (exported on first use), its input names and hidden size."""
    import onnxruntime

    target = cache_dir / f"{source.name}-{_fingerprint(source, onnxruntime.__version__, int8)}"
    if not (target / "model.onnx").is_file():
        _export(source, target, int8)
    names = tuple((target / "inputs.txt").read_text().split())
    return target / "model.onnx", names, int((target / "hidden_size.txt").read_text())


def _fingerprint(source: Path, ort_version: str, int8: bool) -> str:
    """Changes when the weights, the exporter or the precision change, so a stale export is never used."""
    digest = hashlib.sha256(f"{source.resolve()}|{torch.__version__}|{ort_version}|int8={int8}".encode())
    for path in sorted(source.iterdir()):
        if path.is_file():
            stat = path.stat()
            digest.update(f"{path.name}:{stat.st_size}:{stat.st_mtime_ns}".encode())
    return digest.hexdigest()[:16]


def _export(source: Path, target: Path, int8: bool) -> None:
    from transformers import AutoModel, AutoTokenizer

    log.info("exporting the encoder %s to ONNX%s (first start only)", source, " int8" if int8 else "")
    # Eager attention always applies the padding mask; SDPA may skip it when a traced batch has none.
    model = AutoModel.from_pretrained(source, attn_implementation="eager").eval()
    tokenizer = AutoTokenizer.from_pretrained(source)
    names = _accepted_inputs(model)
    sample = tokenizer(["a short query", "a somewhat longer query with padding"], padding=True,
                       return_tensors="pt")
    target.parent.mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(dir=target.parent, prefix=".export-"))
    try:
        fp32 = scratch / "fp32.onnx"
        with warnings.catch_warnings():  # the tracer's notes on Python-side branches; the graph is checked
            warnings.simplefilter("ignore")
            torch.onnx.export(
                _LastHiddenState(model, names), tuple(sample[name] for name in names), str(fp32),
                input_names=names, output_names=["last_hidden_state"], opset_version=17, dynamo=False,
                dynamic_axes={name: {0: "batch", 1: "tokens"} for name in [*names, "last_hidden_state"]},
            )
        if int8:
            _quantize_onnx_int8(fp32, scratch / "model.onnx")
            fp32.unlink()
        else:
            fp32.rename(scratch / "model.onnx")
        (scratch / "inputs.txt").write_text(" ".join(names))
        (scratch / "hidden_size.txt").write_text(str(model.config.hidden_size))
        _publish(scratch, target)
    except BaseException:
        shutil.rmtree(scratch, ignore_errors=True)
        raise


def _publish(scratch: Path, target: Path) -> None:
    """Rename the finished export into place; another process that won the race keeps its copy."""
    try:
        os.replace(scratch, target)
    except OSError:
        if not (target / "model.onnx").is_file():
            raise
        shutil.rmtree(scratch, ignore_errors=True)


class _LastHiddenState(torch.nn.Module):
    """Positional inputs in `names` order and one tensor out: the shape torch.onnx.export traces."""

    def __init__(self, model: torch.nn.Module, names: list[str]) -> None:
        super().__init__()
        self.model, self.names = model, names

    def forward(self, *inputs: torch.Tensor) -> torch.Tensor:
        return self.model(**dict(zip(self.names, inputs, strict=True))).last_hidden_state


def _quantize_onnx_int8(source: Path, target: Path) -> None:
    """Per-channel dynamic int8 weights: a scale per output channel keeps MiniLM's embeddings within
    ~0.99 cosine of fp32, where one scale per tensor (PyTorch's dynamic quantisation) drifts to ~0.94."""
    from onnx import TensorProto
    from onnxruntime.quantization import QuantType, quantize_dynamic

    quantize_dynamic(str(source), str(target), weight_type=QuantType.QInt8, per_channel=True,
                     extra_options={"DefaultTensorType": TensorProto.FLOAT})


def _quantize_linear_int8(model: torch.nn.Module) -> torch.nn.Module:
    """PyTorch's dynamic int8 quantisation of the Linear layers (CPU only).

    PyTorch marks this eager-mode API deprecated in favour of torchao; its warnings are silenced here only.
    """
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return torch.ao.quantization.quantize_dynamic(model, {torch.nn.Linear}, dtype=torch.qint8)
