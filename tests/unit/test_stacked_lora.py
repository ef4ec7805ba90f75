"""Stacked LoRA computes exactly what PEFT computes, row by row, for any mix of adapters and ranks."""

from __future__ import annotations

import pytest
import torch
from peft import LoraConfig

from experts.backends.stacked_lora import StackedLora
from tests.support.models import tiny_model_with_adapters


@pytest.mark.parametrize("rows", [["narrow", "wide", "__base__", "wide"], ["wide"] * 3, ["__base__"] * 2])
def test_stacked_equals_peft_per_sample(rows: list[str]) -> None:
    model = tiny_model_with_adapters()
    stacked = StackedLora()
    ids = torch.randint(0, 64, (len(rows), 5))
    with torch.inference_mode():
        expected = model(input_ids=ids, adapter_names=rows).logits
        assert stacked.ready(model)
        with stacked.rows(rows, ids.device):
            actual = model(input_ids=ids).logits
        after = model(input_ids=ids, adapter_names=rows).logits  # PEFT's own path outside the block
    torch.testing.assert_close(actual, expected, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(after, expected)
    if "wide" in rows:  # the adapters really change the output, so equality above means something
        with torch.inference_mode(), stacked.rows(["__base__"] * len(rows), ids.device):
            assert not torch.allclose(model(input_ids=ids).logits, expected)


def test_stacks_follow_adapters_entering_and_leaving() -> None:
    model = tiny_model_with_adapters()
    stacked = StackedLora()
    ids = torch.randint(0, 64, (2, 4))
    with torch.inference_mode():
        assert stacked.ready(model)
        model.delete_adapter("narrow")
        stacked.invalidate()
        assert stacked.ready(model)
        with stacked.rows(["wide", "narrow"], ids.device):  # a name no longer loaded runs as the base
            actual = model(input_ids=ids).logits
        expected = model(input_ids=ids, adapter_names=["wide", "__base__"]).logits
    torch.testing.assert_close(actual, expected, rtol=1e-5, atol=1e-5)


def test_dora_adapters_fall_back_to_peft() -> None:
    model = tiny_model_with_adapters()
    model.add_adapter("dora", LoraConfig(r=4, use_dora=True, target_modules=["k_proj"]))
    assert not StackedLora().ready(model)


def _explicit_mixture_logits(model: torch.nn.Module, ids: torch.Tensor, weights: dict[str, float]) -> torch.Tensor:
    """The reference: every LoRA layer's output is base(x) + Σ wᵢ·scalingᵢ·Bᵢ·Aᵢ·x, written out by hand
    through forward hooks on the base layers (no stacking, no gathering)."""
    from peft.tuners.lora.layer import Linear as LoraLinear

    hooks = []
    for module in model.modules():
        if not isinstance(module, LoraLinear):
            continue

        def add_deltas(base: torch.nn.Module, inputs: tuple[torch.Tensor, ...], output: torch.Tensor,
                       layer: LoraLinear = module) -> torch.Tensor:
            x = inputs[0]
            for name, weight in weights.items():
                if name in layer.lora_A:
                    delta = x @ layer.lora_A[name].weight.T @ layer.lora_B[name].weight.T
                    output = output + weight * layer.scaling[name] * delta
            return output

        hooks.append(module.base_layer.register_forward_hook(add_deltas))
    try:
        with model.disable_adapter():
            return model(input_ids=ids).logits
    finally:
        for hook in hooks:
            hook.remove()


def test_mixture_rows_equal_the_explicit_weighted_delta_sum() -> None:
    from experts.backends.base import AdapterMix

    model = tiny_model_with_adapters()
    stacked = StackedLora()
    ids = torch.randint(0, 64, (4, 6))
    mix = {"narrow": 0.7, "wide": 0.3}
    rows = [AdapterMix(tuple(mix.items())), "wide", "__base__", AdapterMix((("wide", 0.5),))]
    with torch.inference_mode():
        assert stacked.ready(model)
        with stacked.rows(rows, ids.device):
            actual = model(input_ids=ids).logits
        mixed = _explicit_mixture_logits(model, ids[:1], mix)
        halved = _explicit_mixture_logits(model, ids[3:], {"wide": 0.5})
        single = model(input_ids=ids[1:3], adapter_names=["wide", "__base__"]).logits
    torch.testing.assert_close(actual[:1], mixed, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(actual[3:], halved, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(actual[1:3], single, rtol=1e-5, atol=1e-5)  # other rows are untouched by mixtures
    # the mixture is neither component alone, so the equalities above are about the weighting
    with torch.inference_mode():
        alone = model(input_ids=ids[:1], adapter_names=["narrow"]).logits
    assert not torch.allclose(actual[:1], alone, atol=1e-3)


def test_a_one_zero_mixture_is_the_single_adapter() -> None:
    from experts.backends.base import AdapterMix

    model = tiny_model_with_adapters()
    stacked = StackedLora()
    ids = torch.randint(0, 64, (2, 5))
    with torch.inference_mode():
        assert stacked.ready(model)
        with stacked.rows([AdapterMix((("wide", 1.0), ("narrow", 0.0))), "narrow"], ids.device):
            actual = model(input_ids=ids).logits
        expected = model(input_ids=ids, adapter_names=["wide", "narrow"]).logits
    torch.testing.assert_close(actual, expected, rtol=1e-5, atol=1e-5)


def test_a_mixture_component_not_on_the_device_is_refused() -> None:
    from experts.backends.base import AdapterMix
    from experts.errors import AdapterRejected

    model = tiny_model_with_adapters()
    stacked = StackedLora()
    assert stacked.ready(model)
    with pytest.raises(AdapterRejected, match="gone"), stacked.rows([AdapterMix((("wide", 0.5), ("gone", 0.5)))],
                                                                    torch.device("cpu")):
        pass
