"""Do two trainings of the library give the same adapters? Greedy answers to 20 fixed prompts, compared.

Each prompt is the opening user turn of a fixed train dialogue, answered by its domain's adapter from each
library directory (base model + PEFT, no server). Also reports which adapter files are byte-identical.

Run: python library/train.py --out /tmp/again && python library/check.py library/adapters /tmp/again
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
from pathlib import Path

import torch
from peft import PeftModel
from transformers import AutoModelForCausalLM, AutoTokenizer

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from experts.models import resolve_base_model  # noqa: E402
from library.dialogues import SGD_DIR, load_dialogues  # noqa: E402
from server.settings import Settings  # noqa: E402

PROMPTS = 20
NEW_TOKENS = 24


def fixed_prompts(domains: set[str]) -> list[tuple[str, str]]:
    """(domain, opening user turn) of the first train dialogues whose domain both libraries have, cycling
    through the domains so every adapter present is asked."""
    by_domain: dict[str, list[str]] = {}
    for dialogue in load_dialogues(SGD_DIR / "sgd_train.jsonl"):
        first = dialogue["turns"][0]
        if first["domain"].lower() in domains:
            by_domain.setdefault(first["domain"].lower(), []).append(first["content"])
    order = sorted(by_domain)
    return [(order[i % len(order)], by_domain[order[i % len(order)]][i // len(order)]) for i in range(PROMPTS)]


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("first", type=Path)
    parser.add_argument("second", type=Path)
    args = parser.parse_args()
    torch.manual_seed(0)
    settings = Settings()
    model_dir = resolve_base_model(settings.backend.base_model, settings.server.model_cache_dir)
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    domains = {p.name for p in args.first.iterdir() if (args.second / p.name / "adapter_model.safetensors").exists()}
    model: PeftModel | None = None
    same, rows = 0, []
    for domain, prompt in fixed_prompts(domains):
        answers = []
        for tag, root in (("first", args.first), ("second", args.second)):
            name = f"{domain}-{tag}"
            if model is None:
                base = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
                model = PeftModel.from_pretrained(base, root / domain, adapter_name=name)
            elif name not in model.peft_config:
                model.load_adapter(root / domain, adapter_name=name)
            model.set_adapter(name)
            ids = tokenizer.apply_chat_template([{"role": "user", "content": prompt}], add_generation_prompt=True,
                                                return_tensors="pt", return_dict=True)
            out = model.generate(**ids, max_new_tokens=NEW_TOKENS, do_sample=False)
            answers.append(tokenizer.decode(out[0, ids["input_ids"].shape[1]:], skip_special_tokens=True))
        same += answers[0] == answers[1]
        rows.append({"domain": domain, "prompt": prompt, "answers": answers})
    identical = sorted(d for d in domains if digest(args.first / d / "adapter_model.safetensors")
                       == digest(args.second / d / "adapter_model.safetensors"))
    print(json.dumps({"prompts": len(rows), "same_greedy_answers": same, "adapters_compared": sorted(domains),
                      "byte_identical_weights": identical, "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
