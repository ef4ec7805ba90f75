"""Train the three demo LoRA adapters (sql, math, support) for the embedded SmolLM2-135M-Instruct.

Reproducible: fixed seeds, fixed data (demo/training/*.jsonl, from make_training_data.py), one thread.
Takes a few minutes on two CPU cores. The adapters are committed under demo/adapters/ (fp16
safetensors, about 2 MB each), so a fresh machine does not need to run this.

Run: python demo/train_adapters.py [--only NAME] [--epochs N]
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time
from pathlib import Path

import torch
from peft import LoraConfig, get_peft_model
from transformers import AutoModelForCausalLM, AutoTokenizer

HERE = Path(__file__).parent
sys.path.insert(0, str(HERE.parent))
from experts.models import resolve_base_model  # noqa: E402
from library.train import save_for_serving  # noqa: E402
from server.settings import Settings  # noqa: E402

EXPERTS = ("sql", "math", "support")


def encode(tokenizer, messages: list[dict[str, str]]) -> tuple[list[int], list[int]]:
    """Token ids of the whole conversation and labels that score only the assistant's answer."""
    prompt = tokenizer.apply_chat_template(messages[:-1], add_generation_prompt=True, tokenize=True,
                                           return_dict=True)["input_ids"]
    full = tokenizer.apply_chat_template(messages, tokenize=True, return_dict=True)["input_ids"]
    labels = [-100] * len(prompt) + full[len(prompt):]
    return full, labels


def batches(rows: list[tuple[list[int], list[int]]], size: int, rng: random.Random, pad_id: int):
    order = list(range(len(rows)))
    rng.shuffle(order)
    for start in range(0, len(order), size):
        chunk = [rows[i] for i in order[start:start + size]]
        width = max(len(ids) for ids, _ in chunk)
        ids = torch.full((len(chunk), width), pad_id)
        labels = torch.full((len(chunk), width), -100)
        mask = torch.zeros((len(chunk), width), dtype=torch.long)
        for i, (x, y) in enumerate(chunk):
            ids[i, : len(x)] = torch.tensor(x)
            labels[i, : len(y)] = torch.tensor(y)
            mask[i, : len(x)] = 1
        yield ids, labels, mask


def train_one(name: str, model_dir: Path, epochs: int) -> None:
    torch.manual_seed(0)
    rng = random.Random(0)
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    base = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    config = LoraConfig(r=8, lora_alpha=16, lora_dropout=0.0, task_type="CAUSAL_LM",
                        target_modules=["q_proj", "k_proj", "v_proj", "o_proj"])
    model = get_peft_model(base, config)
    rows = [encode(tokenizer, json.loads(line)["messages"])
            for line in (HERE / "training" / f"{name}.jsonl").read_text().splitlines()]
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=2e-3)
    model.train()
    started = time.time()
    for epoch in range(epochs):
        losses = []
        for ids, labels, mask in batches(rows, 8, rng, tokenizer.pad_token_id or 0):
            loss = model(input_ids=ids, attention_mask=mask, labels=labels).loss
            loss.backward()
            optimizer.step()
            optimizer.zero_grad()
            losses.append(loss.item())
        print(f"{name} epoch {epoch + 1}: loss {sum(losses) / len(losses):.3f} ({time.time() - started:.0f} s)")
    save_for_serving(model, HERE / "adapters" / name)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--only", choices=EXPERTS)
    parser.add_argument("--epochs", type=int, default=3)
    args = parser.parse_args()
    torch.set_num_threads(2)
    settings = Settings()
    model_dir = Path(resolve_base_model(settings.backend.base_model, settings.server.model_cache_dir))
    for name in [args.only] if args.only else EXPERTS:
        train_one(name, model_dir, args.epochs)


if __name__ == "__main__":
    main()
