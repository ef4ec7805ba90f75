"""Stacked LoRA computes exactly what PEFT computes, row by row, for any mix of adapters and ranks."""

from __future__ import annotations

import pytest
import torch
from peft import LoraConfig, get_peft_model
from transformers import LlamaConfig, LlamaForCausalLM

from experts.backends.stacked_lora import StackedLora


def tiny_model_with_adapters() -> torch.nn.Module:
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=64)
    model = get_peft_model(LlamaForCausalLM(config).eval(), LoraConfig(r=4, target_modules=["q_proj", "v_proj"]),
                           adapter_name="narrow")
    # A second adapter with another rank and more target modules: stacks pad ranks and leave gaps at zero.
    model.add_adapter("wide", LoraConfig(r=8, lora_alpha=32, target_modules=["q_proj", "o_proj", "down_proj"]))
    for name, parameter in model.named_parameters():
        if "lora_B" in name:  # PEFT starts B at zero; make every adapter matter
            torch.nn.init.normal_(parameter, std=0.5)
    return model.eval()


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
