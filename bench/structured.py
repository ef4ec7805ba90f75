"""Structured outputs: how often answers are valid, what the grammar costs in a mixed batch, and the two
grammar engines side by side. In-process, on the transformers backend (no HTTP, no routing).

1. Validity. `--prompts` user requests (CLINC150's validation split, the first of each intent in turn),
   each asked for three JSON shapes (`SCHEMAS`), greedy, `--max-tokens` per answer, the prompt naming the
   keys the answer should have. Unconstrained: the model's free answer; JSON mode: the grammar of any
   JSON object; schema: the schema's grammar. For each: the share of answers that parse as JSON (exactly,
   and "lenient" from the first `{` to the last `}`, as a client might salvage), and the share valid
   against the schema.
2. Cost in a mixed batch. 16 concurrent requests over the three demo adapters and the generalist; in the
   baseline run all are free, in the mixed run every other one is constrained (schema `ticket`). Per row,
   decode tokens/s (tokens after the first over the time from first to last token); medians per class, and
   the ratio of constrained rows to the free rows of the same run. Repeated `--repeats` times.
3. Engines. xgrammar (chosen) and llguidance on this tokenizer: compile time of each schema and the
   median time to fill one token mask along a valid answer.
4. Small budgets (`--only small-budget` runs it alone). Forced tool calls (`tool_choice: "required"`,
   one `get_weather(city)` tool, `SMALL_BUDGET_QUERIES`) and `json_schema` (`ticket`, `--prompts` CLINC
   requests) at 48, 64 and 96 tokens, greedy. Schema-valid: the answer parses and is valid against the
   schema; filled: valid, and every string the schema requires is non-empty (a tool call that says
   `{"city": ""}` is valid but useless).

Run: python bench/structured.py [--prompts 100] [--max-tokens 96] [--repeats 3] [--only small-budget]
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
from typing import Any

import jsonschema

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
from experts.adapters import check_adapter_files  # noqa: E402
from experts.backends.base import GenerationRequest, OutputConstraint, SamplingParams  # noqa: E402
from experts.backends.transformers_peft import TransformersBackend  # noqa: E402
from experts.models import EMBEDDED_BASE, resolve_base_model  # noqa: E402
from server.chat.structured import schema_constraint  # noqa: E402
from server.chat.tools import prompt_messages, tool_use_for  # noqa: E402
from server.protocol import ChatMessage, ToolDefinition  # noqa: E402

CLINC = REPO.parent / "shared" / "data" / "clinc150" / "data_full.json"
DEMO = ["sql", "math", "support"]
SCHEMAS: dict[str, dict[str, Any]] = {
    "ticket": {"type": "object", "additionalProperties": False, "required": ["intent", "urgent", "summary"],
               "properties": {"intent": {"type": "string"}, "urgent": {"type": "boolean"},
                              "summary": {"type": "string"}}},
    "entities": {"type": "object", "additionalProperties": False, "required": ["entities", "count"],
                 "properties": {"entities": {"type": "array", "items": {"type": "string"}},
                                "count": {"type": "integer", "minimum": 0}}},
    "reply": {"type": "object", "additionalProperties": False, "required": ["answer", "confidence", "language"],
              "properties": {"answer": {"type": "string"}, "confidence": {"type": "number"},
                             "language": {"type": "string", "enum": ["en", "fr", "es", "other"]}}},
}
SAMPLES = {  # a valid answer per schema, to walk the engines' masks along
    "ticket": {"intent": "transfer", "urgent": True, "summary": "move 100 dollars to savings today"},
    "entities": {"entities": ["Paris", "Monday", "two tickets"], "count": 3},
    "reply": {"answer": "Your card arrives in five days.", "confidence": 0.82, "language": "en"},
}


SMALL_BUDGETS = (48, 64, 96)
WEATHER_TOOL = {"type": "function", "function": {
    "name": "get_weather", "description": "The current weather in a city",
    "parameters": {"type": "object", "additionalProperties": False, "required": ["city"],
                   "properties": {"city": {"type": "string", "description": "the city's name"}}}}}
SMALL_BUDGET_QUERIES = [f"What's the weather in {city}?" for city in (
    "Paris", "Rome", "Tokyo", "Berlin", "Madrid", "Lisbon", "Cairo", "Lima", "Oslo", "Seoul", "Nairobi", "Denver",
    "Toronto", "Sydney", "Mumbai", "Dublin")]


def _prompts(count: int) -> list[str]:
    by_intent: dict[str, list[str]] = {}
    for text, intent in json.loads(CLINC.read_text())["val"]:
        by_intent.setdefault(intent, []).append(text)
    queues = list(by_intent.values())
    return [queues[i % len(queues)][i // len(queues)] for i in range(count)]


def _ask(query: str, schema: str) -> list[dict[str, str]]:
    keys = ", ".join(SCHEMAS[schema]["properties"])
    return [{"role": "user", "content": f"Answer as a JSON object with the keys {keys}. Request: {query}"}]


async def _generate(backend: TransformersBackend, key: str | None, messages: list[dict[str, str]],
                    sampling: SamplingParams) -> tuple[str, list[float]]:
    """The answer, and the arrival time of each chunk that carried tokens."""
    parts, times = [], []
    async for chunk in backend.generate(GenerationRequest(messages, key, sampling)):
        parts.append(chunk.text)
        if chunk.completion_tokens:
            times.append((time.perf_counter(), chunk.completion_tokens))
    return "".join(parts), times  # type: ignore[return-value]


def _parses(text: str, lenient: bool) -> Any:
    if lenient:
        start, end = text.find("{"), text.rfind("}")
        text = text[start:end + 1] if start != -1 and end > start else text
    try:
        return json.loads(text)
    except ValueError:
        return None


async def _validity(backend: TransformersBackend, prompts: list[str], max_tokens: int) -> dict[str, dict]:
    table: dict[str, dict] = {}
    for schema_name, schema in SCHEMAS.items():
        for mode in ("unconstrained", "json mode", "schema"):
            constraint = None if mode == "unconstrained" else OutputConstraint.any_object() if mode == "json mode" \
                else schema_constraint(schema, "bench")
            sampling = SamplingParams(max_tokens, 0.0, 1.0, constraint=constraint)
            answers = []
            for start in range(0, len(prompts), 16):  # 16 at a time: one batch
                answers += await asyncio.gather(*(_generate(backend, None, _ask(p, schema_name), sampling)
                                                  for p in prompts[start:start + 16]))
            texts = [a for a, _ in answers]
            exact = [_parses(t, False) for t in texts]
            lenient = [_parses(t, True) for t in texts]
            table[f"{schema_name} / {mode}"] = {
                "valid_json": sum(v is not None for v in exact) / len(texts),
                "valid_json_lenient": sum(v is not None for v in lenient) / len(texts),
                "schema_valid": sum(_valid(v, schema) for v in exact) / len(texts),
                "schema_valid_lenient": sum(_valid(v, schema) for v in lenient) / len(texts),
            }
            print(f"  {schema_name:<9} {mode:<14} " + "  ".join(f"{k} {v:.2f}" for k, v in
                                                            table[f"{schema_name} / {mode}"].items()), flush=True)
    return table


def _valid(value: Any, schema: dict[str, Any]) -> bool:
    if value is None:
        return False
    try:
        jsonschema.validate(value, schema)
        return True
    except jsonschema.ValidationError:
        return False


def _rate(times: list[tuple[float, int]]) -> float | None:
    """Decode tokens/s of one row: tokens after the first chunk's, over the time since it."""
    if len(times) < 2 or times[-1][1] <= times[0][1]:
        return None
    return (times[-1][1] - times[0][1]) / (times[-1][0] - times[0][0])


async def _mixed(backend: TransformersBackend, prompts: list[str], max_tokens: int) -> dict[str, float]:
    keys: list[str | None] = [*DEMO, None]
    constraint = schema_constraint(SCHEMAS["ticket"], "bench")
    result: dict[str, list[float]] = {"baseline free": [], "mixed free": [], "mixed constrained": []}
    for run in ("baseline", "mixed"):
        jobs = []
        for i in range(16):
            constrained = run == "mixed" and i % 2 == 1
            sampling = SamplingParams(max_tokens, 0.0, 1.0, constraint=constraint if constrained else None,
                                      ignore_eos=not constrained)  # free rows: a fixed length
            messages = _ask(prompts[i % len(prompts)], "ticket")
            jobs.append((constrained, _generate(backend, keys[i % 4], messages, sampling)))
        outcomes = await asyncio.gather(*(job for _, job in jobs))
        for (constrained, _), (_, times) in zip(jobs, outcomes, strict=True):
            rate = _rate(times)
            if rate is not None:
                result[f"{run} {'constrained' if constrained else 'free'}"].append(rate)
    return {name: statistics.median(rates) for name, rates in result.items()}


def _engines(tokenizer: Any, vocab_size: int) -> dict[str, dict[str, float]]:
    import llguidance
    import llguidance.hf
    import llguidance.torch
    import xgrammar as xgr

    table: dict[str, dict[str, float]] = {}
    info = xgr.TokenizerInfo.from_huggingface(tokenizer, vocab_size=vocab_size)
    llg_tokenizer = llguidance.hf.from_tokenizer(tokenizer, n_vocab=vocab_size)
    for name, schema in SCHEMAS.items():
        text = json.dumps(schema)
        ids = tokenizer.encode(json.dumps(SAMPLES[name]))
        compiler = xgr.GrammarCompiler(info, cache_enabled=False)
        started = time.perf_counter()
        grammar = compiler.compile_json_schema(text, strict_mode=True)
        xgr_compile = (time.perf_counter() - started) * 1000
        matcher, bitmask, fills = xgr.GrammarMatcher(grammar), xgr.allocate_token_bitmask(1, vocab_size), []
        for token in ids:
            started = time.perf_counter()
            matcher.fill_next_token_bitmask(bitmask)
            fills.append(time.perf_counter() - started)
            assert matcher.accept_token(token)
        xgr_fill = statistics.median(fills) * 1e6
        started = time.perf_counter()
        llg = llguidance.LLMatcher(llg_tokenizer, llguidance.LLMatcher.grammar_from_json_schema(text))
        llg_compile = (time.perf_counter() - started) * 1000
        bitmask, fills = llguidance.torch.allocate_token_bitmask(1, vocab_size), []
        for token in ids:
            started = time.perf_counter()
            llguidance.torch.fill_next_token_bitmask(llg, bitmask, 0)
            fills.append(time.perf_counter() - started)
            assert llg.consume_token(token)
        llg_fill = statistics.median(fills) * 1e6
        table[name] = {"xgrammar_compile_ms": xgr_compile, "llguidance_compile_ms": llg_compile,
                       "xgrammar_mask_us": xgr_fill, "llguidance_mask_us": llg_fill}
    return table


def _filled(value: Any, schema: dict[str, Any]) -> bool:
    """Every string the schema requires (at any depth of required keys) is non-empty."""
    if isinstance(value, list):
        return bool(value) and all(_filled(item, schema.get("items", {})) for item in value)
    if isinstance(value, dict):
        properties = schema.get("properties", {})
        return all(_filled(value.get(key), properties.get(key, {})) for key in schema.get("required", []))
    if schema.get("type") == "string":
        return isinstance(value, str) and bool(value.strip())
    return True


async def _small_budget(backend: TransformersBackend, prompts: list[str]) -> dict[str, dict[str, float]]:
    """Schema-valid and filled rates of forced tool calls and `json_schema` answers at small budgets."""
    tool_use = tool_use_for([ToolDefinition.model_validate(WEATHER_TOOL)], "required", False)
    assert tool_use is not None
    call_schema = {"type": "array", "minItems": 1, "maxItems": 1, "items": {
        "type": "object", "required": ["name", "arguments"],
        "properties": {"name": {"const": "get_weather"}, "arguments": WEATHER_TOOL["function"]["parameters"]}}}
    cases = {
        "tool call": (tool_use.constraint(), call_schema,
                      [prompt_messages([ChatMessage(role="user", content=q)], tool_use) for q in SMALL_BUDGET_QUERIES]),
        "json_schema": (schema_constraint(SCHEMAS["ticket"], "bench"), SCHEMAS["ticket"],
                        [_ask(p, "ticket") for p in prompts]),
    }
    table: dict[str, dict[str, float]] = {}
    for name, (constraint, schema, conversations) in cases.items():
        for budget in SMALL_BUDGETS:
            sampling = SamplingParams(budget, 0.0, 1.0, constraint=constraint)
            texts = []
            for start in range(0, len(conversations), 16):
                texts += [text for text, _ in await asyncio.gather(
                    *(_generate(backend, None, c, sampling) for c in conversations[start:start + 16]))]
            values = [_parses(t, False) for t in texts]
            valid = [_valid(v, schema) for v in values]
            row = {"answers": len(texts), "schema_valid": sum(valid) / len(texts),
                   "filled": sum(ok and _filled(v, schema) for ok, v in zip(valid, values, strict=True)) / len(texts)}
            table[f"{name} @ {budget}"] = row
            print(f"  {name:<12} {budget:>3} tokens  schema-valid {row['schema_valid']:.2f}  "
                  f"filled {row['filled']:.2f}", flush=True)
    return table


async def _run(args: argparse.Namespace) -> dict[str, Any]:
    model_dir = resolve_base_model(EMBEDDED_BASE, Path.home() / ".cache" / "switchyard" / "models")
    backend = TransformersBackend(Path(model_dir), "cpu", 2048, max_loras=8, max_cpu_loras=0, max_batch=16)
    for name in DEMO:
        await backend.load_adapter(name, check_adapter_files(REPO / "demo" / "adapters" / name, 64))
    prompts = _prompts(args.prompts)
    print("small budgets (greedy):", flush=True)
    small = await _small_budget(backend, prompts)
    if args.only == "small-budget":
        await backend.close()
        return {"small_budget": small}
    print("validity (greedy):", flush=True)
    validity = await _validity(backend, prompts, args.max_tokens)
    mixed_runs = [await _mixed(backend, prompts, args.max_tokens) for _ in range(args.repeats)]
    mixed = {name: statistics.median(run[name] for run in mixed_runs) for name in mixed_runs[0]}
    engines = _engines(backend._tokenizer, backend._vocab_size)  # noqa: SLF001 - the backend's own tokenizer
    await backend.close()
    return {"small_budget": small, "validity": validity, "mixed_batch_tokens_per_s": mixed, "mixed_runs": mixed_runs,
            "engines": engines}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--prompts", type=int, default=100)
    parser.add_argument("--max-tokens", type=int, default=96)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--only", choices=["small-budget"], help="run one section alone")
    parser.add_argument("--out", type=Path, default=None,
                        help="default: bench/results/structured.json (structured_small_budget.json with --only)")
    args = parser.parse_args()
    out = args.out or REPO / "bench" / "results" / ("structured_small_budget.json" if args.only else "structured.json")
    result = asyncio.run(_run(args))
    print(f"\n{'small budget':<26} {'schema-valid':>12} {'filled':>8}")
    for name, row in result["small_budget"].items():
        print(f"{name:<26} {row['schema_valid']:>12.2f} {row['filled']:>8.2f}")
    if args.only:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps({"machine": platform.machine(), "prompts": args.prompts, **result}, indent=2))
        return
    print(f"\n{'schema / mode':<26} {'valid JSON':>10} {'lenient':>8} {'schema-valid':>12} {'lenient':>8}")
    for name, row in result["validity"].items():
        print(f"{name:<26} {row['valid_json']:>10.2f} {row['valid_json_lenient']:>8.2f} {row['schema_valid']:>12.2f} "
              f"{row['schema_valid_lenient']:>8.2f}")
    mixed = result["mixed_batch_tokens_per_s"]
    print(f"\n{'16 rows, 4 adapters':<26} {'decode tok/s per row (median)':>30}")
    for name, rate in mixed.items():
        print(f"{name:<26} {rate:>30.1f}")
    ratios = {"constrained / free, same batch": mixed["mixed constrained"] / mixed["mixed free"],
              "free rows, mixed / baseline batch": mixed["mixed free"] / mixed["baseline free"]}
    for name, ratio in ratios.items():
        print(f"{name}: {ratio:.2f}x")
    print(f"\n{'engine':<10} " + " ".join(f"{n:>22}" for n in result["engines"]))
    for metric in ("compile_ms", "mask_us"):
        for engine in ("xgrammar", "llguidance"):
            print(f"{engine:<10} " + " ".join(f"{row[f'{engine}_{metric}']:>19.1f} {metric.split('_')[1]:>2}"
                                              for row in result["engines"].values()))
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"machine": platform.machine(), "prompts": args.prompts,
                                    "max_tokens": args.max_tokens, "repeats": args.repeats, **result,
                                    "ratios": ratios}, indent=2))


if __name__ == "__main__":
    main()
