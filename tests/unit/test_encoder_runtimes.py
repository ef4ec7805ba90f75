"""The query encoder's runtimes and length bucketing: ONNX Runtime must give PyTorch's embeddings, int8
must keep the geometry routing relies on, and splitting a batch by length must not change any row."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from experts.encoders.query import EMBEDDED_ENCODER, QueryEncoder, length_buckets, resolve_encoder
from experts.encoders.runtime import TorchRuntime

# Lengths from 3 to ~60 tokens, so a batch spans several buckets.
TEXTS = ["hi", "How do I reset my password?", "Write SQL to count the orders per customer in 2024",
         "What is 7 times 8?", "Explain, step by step and with an example, how a hash join differs from a "
         "nested loop join, when a query planner picks each one, and what indexes change about that choice",
         "thanks"]


@pytest.fixture(scope="module")
def export_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("encoders")


@pytest.fixture(scope="module")
def torch_fp32() -> QueryEncoder:
    return QueryEncoder(resolve_encoder(EMBEDDED_ENCODER))


def test_onnx_runtime_gives_the_pytorch_embeddings(torch_fp32: QueryEncoder, export_dir: Path) -> None:
    onnx = QueryEncoder(resolve_encoder(EMBEDDED_ENCODER), runtime="onnx", cache_dir=export_dir)
    assert onnx.runtime == "onnx" and onnx.dim == torch_fp32.dim
    assert torch.allclose(onnx.encode(TEXTS), torch_fp32.encode(TEXTS), atol=1e-5)


def test_onnx_export_is_cached_and_keyed_by_precision(export_dir: Path) -> None:
    QueryEncoder(resolve_encoder(EMBEDDED_ENCODER), runtime="onnx", cache_dir=export_dir)
    fp32_exports = sorted(export_dir.iterdir())
    assert len(fp32_exports) == 1 and (fp32_exports[0] / "model.onnx").is_file()
    written = (fp32_exports[0] / "model.onnx").stat().st_mtime_ns
    QueryEncoder(resolve_encoder(EMBEDDED_ENCODER), runtime="onnx", cache_dir=export_dir)
    assert (fp32_exports[0] / "model.onnx").stat().st_mtime_ns == written  # reused, not exported again
    QueryEncoder(resolve_encoder(EMBEDDED_ENCODER), runtime="onnx", int8=True, cache_dir=export_dir)
    assert len(list(export_dir.iterdir())) == 2  # int8 is a separate export
    assert not [p for p in export_dir.iterdir() if p.name.startswith(".export-")]  # no scratch left behind


@pytest.mark.parametrize("runtime", ["torch", "onnx"])
def test_int8_encoder_keeps_the_geometry(runtime: str, torch_fp32: QueryEncoder, export_dir: Path) -> None:
    int8 = QueryEncoder(resolve_encoder(EMBEDDED_ENCODER), runtime=runtime, int8=True, cache_dir=export_dir)
    full, quantised = torch_fp32.encode(TEXTS), int8.encode(TEXTS)
    assert torch.allclose(quantised.norm(dim=1), torch.ones(len(TEXTS)), atol=1e-4)
    floor = 0.9 if runtime == "onnx" else 0.7  # per-channel ONNX weights stay much closer than PyTorch's
    assert ((full * quantised).sum(dim=1) > floor).all()
    assert ((quantised @ quantised.T).argmax(dim=1) == torch.arange(len(TEXTS))).all()


def test_a_bucketed_batch_equals_each_text_alone(torch_fp32: QueryEncoder) -> None:
    lengths = [torch_fp32.count_tokens([text]) for text in TEXTS]
    assert len(length_buckets(lengths, TorchRuntime.call_overhead_tokens)) > 1  # the batch is really split
    together = torch_fp32.encode(TEXTS)
    alone = torch.stack([torch_fp32.encode_one(text) for text in TEXTS])
    assert torch.allclose(together, alone, atol=1e-5)


@given(st.lists(st.integers(1, 256), min_size=1, max_size=64), st.integers(0, 512))
def test_length_buckets_partition_the_rows(lengths: list[int], overhead: int) -> None:
    runs = length_buckets(lengths, overhead)
    assert sorted(row for run in runs for row in run) == list(range(len(lengths)))
    padded = sum(len(run) * max(lengths[row] for row in run) for run in runs)
    assert overhead * len(runs) + padded <= overhead + len(lengths) * max(lengths)  # never worse than one block
    if overhead >= len(lengths) * max(lengths):
        assert len(runs) == 1  # a call costs more than any padding it could save


def test_an_encoder_that_cannot_be_exported_falls_back_to_pytorch(tmp_path: Path,
                                                                   torch_fp32: QueryEncoder) -> None:
    blocked = tmp_path / "not-a-directory"
    blocked.write_text("")  # the export cache cannot be created under a file
    encoder = QueryEncoder(resolve_encoder(EMBEDDED_ENCODER), runtime="onnx", cache_dir=blocked / "encoders")
    assert encoder.runtime == "torch"
    assert torch.allclose(encoder.encode(TEXTS), torch_fp32.encode(TEXTS), atol=1e-6)
