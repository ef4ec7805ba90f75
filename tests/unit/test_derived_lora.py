"""A mixture written as one derived LoRA (what vLLM is given) computes what the stacked mixture computes."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from experts.adapters import check_adapter_files
from experts.backends.base import AdapterMix
from experts.backends.derived_lora import DerivedAdapter, DerivedAdapters, write_derived_adapter
from experts.backends.stacked_lora import StackedLora
from tests.support.models import tiny_model_with_adapters


@pytest.mark.parametrize("weights", [{"narrow": 0.7, "wide": 0.3}, {"wide": 1.0, "narrow": 0.0}, {"narrow": 0.4}])
def test_derived_adapter_equals_the_stacked_mixture(tmp_path: Path, weights: dict[str, float]) -> None:
    model = tiny_model_with_adapters()
    for name in ("narrow", "wide"):  # different ranks, alphas and target modules; saved to tmp_path / name
        model.save_pretrained(str(tmp_path), selected_adapters=[name])
    files = {name: check_adapter_files(tmp_path / name, 64) for name in ("narrow", "wide")}
    rank = write_derived_adapter([(files[name], w) for name, w in weights.items()], tmp_path / "derived")
    assert rank == sum(files[name].rank for name in weights)
    model.load_adapter(str(tmp_path / "derived"), adapter_name="derived")
    stacked = StackedLora()
    ids = torch.randint(0, 64, (2, 6))
    with torch.inference_mode():
        assert stacked.ready(model)
        with stacked.rows([AdapterMix(tuple(weights.items()))] * 2, ids.device):
            mixed = model(input_ids=ids).logits
        derived = model(input_ids=ids, adapter_names=["derived"] * 2).logits
    torch.testing.assert_close(derived, mixed, rtol=1e-4, atol=1e-4)


def test_derived_adapters_are_shared_and_dropped_with_a_component() -> None:
    derived = DerivedAdapters(max_entries=2)
    mixes = [AdapterMix((("a", 0.5), ("b", 0.5))), AdapterMix((("a", 0.2), ("c", 0.8))),
             AdapterMix((("b", 0.5), ("c", 0.5)))]
    entries = []
    for mix in mixes[:2]:
        key, directory = derived.new_directory()
        directory.mkdir(parents=True)
        entries.append(DerivedAdapter(key, directory, mix))
        assert derived.add(entries[-1]) == []
    assert derived.get(mixes[0]) is entries[0]
    entries[0].in_use = 1  # a request runs on it: never pushed out
    key, directory = derived.new_directory()
    assert key not in {e.key for e in entries}
    assert derived.add(DerivedAdapter(key, directory, mixes[2])) == [entries[1]]
    gone = derived.with_component("a")
    assert gone == [entries[0]] and not entries[0].directory.exists()
    assert derived.get(mixes[0]) is None and derived.get(mixes[2]) is not None
    derived.close()
