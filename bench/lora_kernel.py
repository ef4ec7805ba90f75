"""Stacked LoRA versus PEFT's per-sample path, in-process, on the backend itself (no HTTP, no routing).

Loads the embedded base model twice (stacked on, then off) with 8 adapters (the 3 demo adapters and 5
copies under other names), and for each runs, greedy, `--max-tokens` per request:
8 concurrent requests on one adapter, 8 concurrent on 8 different adapters, the 8 one at a time, and 8
concurrent on the generalist. Reports generated tokens/s and the ratios the throughput goals are stated in.
Both legs run in the same process, one after the other; prints a table and writes JSON.

Run: python bench/lora_kernel.py [--max-tokens 32] [--repeats 2]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import platform
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
from experts.adapters import check_adapter_files  # noqa: E402
from experts.backends.base import GenerationRequest, SamplingParams  # noqa: E402
from experts.backends.transformers_peft import TransformersBackend  # noqa: E402
from experts.models import EMBEDDED_BASE, resolve_base_model  # noqa: E402

DEMO = ["sql", "math", "support"]
PROMPTS = ["List all customers from Paris.", "What is 12 times 11?", "My order never arrived.",
           "Count the employees per department.", "Ana has 7 pens and buys 5 more.", "How do I reset my password?",
           "Show the ten most recent orders.", "I was charged twice."]


async def _one(backend: TransformersBackend, key: str | None, prompt: str, max_tokens: int) -> int:
    request = GenerationRequest([{"role": "user", "content": prompt}], key, SamplingParams(max_tokens, 0.0, 1.0))
    tokens = 0
    async for chunk in backend.generate(request):
        tokens = chunk.completion_tokens
    return tokens


async def _scenario(backend: TransformersBackend, keys: list[str | None], concurrent: bool, max_tokens: int) -> float:
    started = time.perf_counter()
    if concurrent:
        counts = await asyncio.gather(*(_one(backend, k, p, max_tokens) for k, p in zip(keys, PROMPTS, strict=True)))
    else:
        counts = [await _one(backend, k, p, max_tokens) for k, p in zip(keys, PROMPTS, strict=True)]
    return sum(counts) / (time.perf_counter() - started)


async def _leg(stacked: bool, max_tokens: int, repeats: int) -> dict[str, float]:
    model_dir = resolve_base_model(EMBEDDED_BASE, Path.home() / ".cache" / "switchyard" / "models")
    backend = TransformersBackend(Path(model_dir), "cpu", 2048, max_loras=8, max_cpu_loras=0, max_batch=16,
                                  stacked_lora=stacked)
    keys = [f"{name}-{i}" for i, name in enumerate(DEMO * 3)][:8]
    for key in keys:
        await backend.load_adapter(key, check_adapter_files(REPO / "demo" / "adapters" / key.split("-")[0], 64))
    scenarios = {"one adapter x8": (keys[:1] * 8, True), "8 adapters x8": (keys, True),
                 "8 adapters one at a time": (keys, False), "generalist x8": ([None] * 8, True)}
    await _scenario(backend, keys, True, 4)  # warm-up
    result = {name: statistics.median([await _scenario(backend, k, c, max_tokens) for _ in range(repeats)])
              for name, (k, c) in scenarios.items()}
    await backend.close()
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--max-tokens", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "lora_kernel.json")
    args = parser.parse_args()
    legs = {"stacked": asyncio.run(_leg(True, args.max_tokens, args.repeats)),
            "peft": asyncio.run(_leg(False, args.max_tokens, args.repeats))}
    print(f"{'scenario':<26} {'stacked tok/s':>14} {'PEFT tok/s':>11}")
    for name in legs["stacked"]:
        print(f"{name:<26} {legs['stacked'][name]:>14.1f} {legs['peft'][name]:>11.1f}")
    ratios = {leg: {"mixed / one at a time": r["8 adapters x8"] / r["8 adapters one at a time"],
                    "mixed / one adapter": r["8 adapters x8"] / r["one adapter x8"],
                    "one adapter / generalist (LoRA tax)": r["one adapter x8"] / r["generalist x8"]}
              for leg, r in legs.items()}
    for leg, values in ratios.items():
        print(f"{leg}: " + ", ".join(f"{k} {v:.2f}x" for k, v in values.items()))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"machine": platform.machine(), "max_tokens": args.max_tokens,
                                    "tokens_per_s": legs, "ratios": ratios}, indent=2))


if __name__ == "__main__":
    main()
