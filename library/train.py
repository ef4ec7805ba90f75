"""Train the SGD expert library: one LoRA adapter per train domain of ../shared/data/sgd (16).

Each adapter learns its domain's assistant replies given the conversation so far, from `sgd_train.jsonl`
only (never dev). The adapters are committed under library/adapters/<domain>/ as fp16 safetensors, so a
fresh machine serves the library (`switchyard serve --config config/library.yaml`) without training.

Reproducible: fixed seeds, a fixed sample of the data, a fixed thread count, and each adapter trained from a
freshly loaded base with its own seed, so one domain's adapter does not depend on which ran before it.
`python library/train.py --out /tmp/again` followed by `python library/check.py library/adapters /tmp/again`
shows a second run gives the same greedy answers.

Run: python library/train.py [--only Banks,Buses] [--examples 192] [--out library/adapters]
"""

from __future__ import annotations

import argparse
import json
import random
import shutil
import sys
import time
from pathlib import Path

import torch
from peft import LoraConfig, PeftModel, get_peft_model
from safetensors.torch import load_file, save_file
from transformers import AutoModelForCausalLM, AutoTokenizer

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from experts.models import EMBEDDED_BASE, resolve_base_model  # noqa: E402
from library.dialogues import SGD_DIR, load_dialogues, reply_examples  # noqa: E402
from server.settings import Settings  # noqa: E402

RANK = 4
MAX_TOKENS = 320  # conversation plus reply; older turns are dropped first
BATCH = 8
THREADS = 2


def encode(tokenizer, messages: list[dict[str, str]]) -> tuple[list[int], list[int]]:
    """Token ids of the conversation and labels that score only the final assistant reply.

    The oldest exchanges are dropped until it fits MAX_TOKENS, so the context the adapter learns from is the
    recent conversation, as the server sees it.
    """
    while True:
        prompt = tokenizer.apply_chat_template(messages[:-1], add_generation_prompt=True, tokenize=True,
                                               return_dict=True)["input_ids"]
        full = tokenizer.apply_chat_template(messages, tokenize=True, return_dict=True)["input_ids"]
        if len(full) <= MAX_TOKENS or len(messages) <= 2:
            break
        messages = messages[2:]
    labels = [-100] * len(prompt) + full[len(prompt):]
    return full[:MAX_TOKENS], labels[:MAX_TOKENS]


def batches(rows: list[tuple[list[int], list[int]]], rng: random.Random, pad_id: int):
    """Shuffled batches of similar length (less padding), in a seeded order."""
    order = sorted(range(len(rows)), key=lambda i: (len(rows[i][0]), i))
    chunks = [order[i:i + BATCH] for i in range(0, len(order), BATCH)]
    rng.shuffle(chunks)
    for chunk in chunks:
        width = max(len(rows[i][0]) for i in chunk)
        ids = torch.full((len(chunk), width), pad_id)
        labels = torch.full((len(chunk), width), -100)
        mask = torch.zeros((len(chunk), width), dtype=torch.long)
        for row, i in enumerate(chunk):
            x, y = rows[i]
            ids[row, : len(x)] = torch.tensor(x)
            labels[row, : len(y)] = torch.tensor(y)
            mask[row, : len(x)] = 1
        yield ids, labels, mask


def train_one(domain: str, examples: list[list[dict[str, str]]], model_dir: Path, out_root: Path,
              epochs: int) -> float:
    torch.manual_seed(0)
    rng = random.Random(0)
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    base = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    config = LoraConfig(r=RANK, lora_alpha=2 * RANK, lora_dropout=0.0, task_type="CAUSAL_LM",
                        target_modules=["q_proj", "k_proj", "v_proj", "o_proj"])
    model = get_peft_model(base, config)
    rows = [encode(tokenizer, messages) for messages in examples]
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=2e-3)
    model.train()
    started = time.time()
    loss_sum = 0.0
    for epoch in range(epochs):
        losses = []
        for ids, labels, mask in batches(rows, rng, tokenizer.pad_token_id or 0):
            loss = model(input_ids=ids, attention_mask=mask, labels=labels).loss
            loss.backward()
            optimizer.step()
            optimizer.zero_grad()
            losses.append(loss.item())
        loss_sum = sum(losses) / len(losses)
        print(f"{domain} epoch {epoch + 1}: loss {loss_sum:.3f} ({time.time() - started:.0f} s)", flush=True)
    save_for_serving(model, out_root / domain.lower())
    return loss_sum


def save_for_serving(model: PeftModel, out: Path) -> None:
    """The adapter as it is committed and served: fp16 safetensors (half the size; the server computes in the
    base model's dtype) and a config naming the embedded base, with nothing else in the directory."""
    shutil.rmtree(out, ignore_errors=True)
    model.save_pretrained(out)
    weights = out / "adapter_model.safetensors"
    save_file({k: v.half().contiguous() for k, v in load_file(weights).items()}, weights)
    adapter_config = json.loads((out / "adapter_config.json").read_text())
    adapter_config["base_model_name_or_path"] = EMBEDDED_BASE
    (out / "adapter_config.json").write_text(json.dumps(adapter_config, indent=2, sort_keys=True) + "\n")
    (out / "README.md").unlink(missing_ok=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", help="comma-separated domains (default: all 16 of train)")
    parser.add_argument("--examples", type=int, default=192, help="replies per domain")
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--data", type=Path, default=SGD_DIR / "sgd_train.jsonl")
    parser.add_argument("--out", type=Path, default=ROOT / "library" / "adapters")
    args = parser.parse_args()
    torch.set_num_threads(THREADS)
    torch.use_deterministic_algorithms(True)
    settings = Settings()
    model_dir = Path(resolve_base_model(settings.backend.base_model, settings.server.model_cache_dir))
    dialogues = load_dialogues(args.data)
    by_domain = reply_examples(dialogues, per_domain=args.examples, seed=0)
    chosen = args.only.split(",") if args.only else sorted(by_domain)
    started = time.time()
    summary = {}
    for domain in chosen:
        summary[domain] = round(train_one(domain, by_domain[domain], model_dir, args.out, args.epochs), 4)
    print(json.dumps({"seconds": round(time.time() - started), "final_loss": summary}, indent=2))


if __name__ == "__main__":
    main()
