"""The model probe on the real backend: loads leave the base checksum alone, and a base model whose
weights did change (what the adapter allowlist prevents) is caught by the load probe and by `/health`'s
check, which reads the same probe."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
import torch

from experts.adapters import check_adapter_files
from experts.backends import transformers_peft
from experts.backends.transformers_peft import TransformersBackend
from experts.errors import AdapterRejected
from experts.models import EMBEDDED_BASE, resolve_base_model
from tests.support.server_process import REPO


def test_the_probe_catches_a_changed_base_model(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(transformers_peft, "HEALTH_PROBE_SECONDS", 0.0)

    async def run() -> None:
        model_dir = resolve_base_model(EMBEDDED_BASE, Path.home() / ".cache" / "switchyard" / "models")
        backend = TransformersBackend(Path(model_dir), "cpu", 2048, max_loras=4, max_cpu_loras=0, max_batch=4)
        before = await backend.base_checksum()
        await backend.load_adapter("sql", check_adapter_files(REPO / "demo" / "adapters" / "sql", 64))
        assert await backend.base_checksum() == before and await backend.health() == []
        with torch.no_grad():  # what a non-LoRA tensor in an adapter once did through PEFT's lenient load
            backend._base.model.norm.weight.zero_()
        problems = await backend.health()  # the probe runs in the background: poll until it has reported
        for _ in range(200):
            if problems:
                break
            await asyncio.sleep(0.05)
            problems = await backend.health()
        assert problems and "base weights changed" in problems[0]
        assert await backend.base_checksum() != before
        with pytest.raises(AdapterRejected, match="changed the base model's outputs"):
            await backend.load_adapter("math", check_adapter_files(REPO / "demo" / "adapters" / "math", 64))
        assert backend.residency("math") is None  # the refused adapter left nothing behind
        await backend.close()

    asyncio.run(run())
