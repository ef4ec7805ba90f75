"""Stacked LoRA versus PEFT's per-sample path, in-process, on the backend itself (no HTTP, no routing).

Loads the embedded base model twice (stacked on, then off) with 8 adapters (the 3 demo adapters and 5
copies under other names), and for each runs, greedy, `--max-tokens` per request:
8 concurrent requests on one adapter, 8 concurrent on 8 different adapters, the 8 one at a time, and 8
concurrent on the generalist. Reports generated tokens/s and the ratios the throughput goals are stated in.
Both legs run in the same process, one after the other.

Requests stop at their end-of-sequence token, so end-to-end tokens/s also depends on how long each
adapter's answers are; `--ignore-eos` makes every request generate exactly `--max-tokens` (vLLM's
benchmarks do the same), which takes uneven answer lengths out of the end-to-end ratios. The second
table takes prefill out as well: the time of one decode step (batch of 8 rows, a 48-token context),
stacked versus PEFT on the same loaded model, for the same four cases (one at a time = 8 steps of batch
1). Prints both tables and writes JSON.

Mixture rows (issue 21), stacked only (PEFT's path cannot mix): 8 concurrent requests each on a mixture
of k = 2 or 3 of the adapters (equal weights), in both tables. Their cost is stated as the mixed batch's
time per token over the same batch of single-adapter rows ("8 adapters x8"), in the same run.

Run: python bench/lora_kernel.py [--max-tokens 32] [--repeats 2] [--ignore-eos] [--legs stacked]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import platform
import statistics
import sys
import time
from contextlib import nullcontext
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
from experts.adapters import check_adapter_files  # noqa: E402
from experts.backends.base import AdapterMix, GenerationRequest, SamplingParams  # noqa: E402
from experts.backends.transformers_peft import TransformersBackend  # noqa: E402
from experts.models import EMBEDDED_BASE, resolve_base_model  # noqa: E402

DEMO = ["sql", "math", "support"]
PROMPTS = ["List all customers from Paris.", "What is 12 times 11?", "My order never arrived.",
           "Count the employees per department.", "Ana has 7 pens and buys 5 more.", "How do I reset my password?",
           "Show the ten most recent orders.", "I was charged twice."]


IGNORE_EOS = False  # set from --ignore-eos
MIXTURE_SIZES = (2, 3)


Target = str | AdapterMix | None  # one adapter, a mixture, or the generalist


def _mixtures(keys: list[str], k: int) -> list[AdapterMix]:
    """Row i mixes adapter i with the next k - 1 (equal weights): every row a different mixture."""
    return [AdapterMix(tuple((keys[(i + j) % len(keys)], 1.0 / k) for j in range(k))) for i in range(len(keys))]


async def _one(backend: TransformersBackend, key: Target, prompt: str, max_tokens: int) -> int:
    sampling = SamplingParams(max_tokens, 0.0, 1.0, ignore_eos=IGNORE_EOS)
    request = GenerationRequest([{"role": "user", "content": prompt}], key if isinstance(key, str) else None,
                                sampling, mixture=key if isinstance(key, AdapterMix) else None)
    tokens = 0
    async for chunk in backend.generate(request):
        tokens = chunk.completion_tokens
    return tokens


async def _scenario(backend: TransformersBackend, keys: list[Target], concurrent: bool, max_tokens: int) -> float:
    started = time.perf_counter()
    if concurrent:
        counts = await asyncio.gather(*(_one(backend, k, p, max_tokens) for k, p in zip(keys, PROMPTS, strict=True)))
    else:
        counts = [await _one(backend, k, p, max_tokens) for k, p in zip(keys, PROMPTS, strict=True)]
    return sum(counts) / (time.perf_counter() - started)


def _step_ms(backend: TransformersBackend, rows: list[str | AdapterMix], stacked: bool, steps: int = 12) -> float:
    """Median time of one decode step for `rows`, through the stacked path or PEFT's (as the scheduler picks)."""
    model = backend._peft  # noqa: SLF001 - a benchmark of the backend's own kernels
    kwargs: dict = {}
    if not stacked:
        if len(set(rows)) == 1 and rows[0] != "__base__":
            model.set_adapter(rows[0])
        else:
            kwargs["adapter_names"] = rows
    torch.manual_seed(0)
    ids = torch.randint(100, 1000, (len(rows), 48))
    block = backend._stacked.rows(rows, ids.device) if stacked else nullcontext()  # noqa: SLF001
    times = []
    with torch.inference_mode(), block:
        out = model(input_ids=ids, use_cache=True, **kwargs)
        for _ in range(steps):
            token = out.logits[:, -1:].argmax(-1)
            started = time.perf_counter()
            out = model(input_ids=token, past_key_values=out.past_key_values, use_cache=True, **kwargs)
            times.append(time.perf_counter() - started)
    return statistics.median(times) * 1000


def _steps(backend: TransformersBackend, keys: list[str]) -> dict[str, dict[str, float]]:
    assert backend._stacked.ready(backend._peft)  # noqa: SLF001
    cases: dict[str, list] = {"one adapter x8": keys[:1] * 8, "8 adapters x8": keys, "generalist x8": ["__base__"] * 8}
    table = {}
    for kind in ("stacked", "peft"):
        table[kind] = {name: _step_ms(backend, rows, kind == "stacked") for name, rows in cases.items()}
        table[kind]["8 adapters one at a time"] = sum(_step_ms(backend, [k], kind == "stacked") for k in keys)
    for k in MIXTURE_SIZES:
        rows: list[str | AdapterMix] = list(_mixtures(keys, k))
        table["stacked"][f"mixtures k={k} x8"] = _step_ms(backend, rows, True)
        table["stacked"][f"half mixtures k={k} x8"] = _step_ms(backend, rows[:4] + keys[4:], True)
        table["peft"][f"mixtures k={k} x8"] = table["peft"][f"half mixtures k={k} x8"] = float("nan")
    return table


async def _leg(stacked: bool, max_tokens: int, repeats: int) -> dict[str, float]:
    model_dir = resolve_base_model(EMBEDDED_BASE, Path.home() / ".cache" / "switchyard" / "models")
    backend = TransformersBackend(Path(model_dir), "cpu", 2048, max_loras=8, max_cpu_loras=0, max_batch=16,
                                  stacked_lora=stacked)
    keys = [f"{name}-{i}" for i, name in enumerate(DEMO * 3)][:8]
    for key in keys:
        await backend.load_adapter(key, check_adapter_files(REPO / "demo" / "adapters" / key.split("-")[0], 64))
    scenarios = {"one adapter x8": (keys[:1] * 8, True), "8 adapters x8": (keys, True),
                 "8 adapters one at a time": (keys, False), "generalist x8": ([None] * 8, True)}
    if stacked:
        for k in MIXTURE_SIZES:
            scenarios[f"mixtures k={k} x8"] = (list(_mixtures(keys, k)), True)
    await _scenario(backend, keys, True, 4)  # warm-up
    result = {name: statistics.median([await _scenario(backend, k, c, max_tokens) for _ in range(repeats)])
              for name, (k, c) in scenarios.items()}
    if stacked:
        result["steps_ms"] = await asyncio.get_running_loop().run_in_executor(
            backend._executor, _steps, backend, keys)  # noqa: SLF001 - on the model's own thread
    await backend.close()
    return result


def _ratios(rates: dict[str, float]) -> dict[str, float]:
    """The throughput goals' ratios from tokens/s per scenario; a mixture row's cost is the time per token
    of a batch of mixture rows over the same batch of single-adapter rows (higher: costlier)."""
    ratios = {"mixed / one at a time": rates["8 adapters x8"] / rates["8 adapters one at a time"],
              "mixed / one adapter": rates["8 adapters x8"] / rates["one adapter x8"],
              "one adapter / generalist (LoRA tax)": rates["one adapter x8"] / rates["generalist x8"]}
    for k in MIXTURE_SIZES:
        for name in (f"mixtures k={k} x8", f"half mixtures k={k} x8"):
            if name in rates:
                ratios[f"cost of {name} / 8 adapters x8"] = rates["8 adapters x8"] / rates[name]
    return ratios


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--max-tokens", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--ignore-eos", action="store_true", help="every request generates --max-tokens")
    parser.add_argument("--legs", choices=["both", "stacked"], default="both", help="stacked: skip PEFT's leg")
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "lora_kernel.json")
    args = parser.parse_args()
    global IGNORE_EOS
    IGNORE_EOS = args.ignore_eos
    legs = {"stacked": asyncio.run(_leg(True, args.max_tokens, args.repeats))}
    legs["peft"] = asyncio.run(_leg(False, args.max_tokens, args.repeats)) if args.legs == "both" else {}
    legs["peft"] = {name: legs["peft"].get(name, float("nan")) for name in legs["stacked"] if name != "steps_ms"}
    steps = legs["stacked"].pop("steps_ms")
    print(f"{'end to end':<26} {'stacked tok/s':>14} {'PEFT tok/s':>11}")
    for name in legs["stacked"]:
        print(f"{name:<26} {legs['stacked'][name]:>14.1f} {legs['peft'][name]:>11.1f}")
    print(f"\n{'decode step (8 tokens)':<26} {'stacked ms':>14} {'PEFT ms':>11}")
    for name in steps["stacked"]:
        print(f"{name:<26} {steps['stacked'][name]:>14.1f} {steps['peft'][name]:>11.1f}")
    # A step makes 8 tokens (one per row); one at a time makes them in 8 steps: rates, then the same ratios.
    step_rates = {kind: {name: 8000.0 / ms for name, ms in t.items()} for kind, t in steps.items()}
    step_ratios = {kind: _ratios(rates) for kind, rates in step_rates.items()}
    ratios = {leg: _ratios(rates) for leg, rates in legs.items()}
    for label, table in (("per step", step_ratios), ("end to end", ratios)):
        for kind, values in table.items():
            print(f"{label}, {kind}: " + ", ".join(f"{k} {v:.2f}x" for k, v in values.items()))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"machine": platform.machine(), "max_tokens": args.max_tokens,
                                    "ignore_eos": args.ignore_eos,
                                    "tokens_per_s": legs, "ratios": ratios, "step_ms": steps,
                                    "step_ratios": step_ratios}, indent=2))


if __name__ == "__main__":
    main()
