"""Tiny models built in memory for the exactness tests (no download, no file)."""

from __future__ import annotations

import torch
from peft import LoraConfig, get_peft_model
from transformers import LlamaConfig, LlamaForCausalLM


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
