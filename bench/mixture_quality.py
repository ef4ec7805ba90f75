"""Do mixtures answer better? Per-token negative log-likelihood (NLL) of reference answers, through the real
server (`/v1/completions` with `echo` and `logprobs`), under:

- the generalist (the base model alone);
- the routed single adapter (what `auto` picks, the generalist on fallback);
- the routed mixture: the top two experts mixed with softmax(score / temperature) weights when the
  runner-up scores within `margin` of the best (`routers/mixture.py`), else the routed single adapter;
- the oracle: the best single adapter (or the generalist) for each example, in hindsight.

Two sets, made here from a fixed seed; none of their prompts is in the adapters' training data
(`demo/training`, checked below):

- **in-domain**: held-out examples of each demo adapter's own domain, from the templates that made its
  training data (`demo/make_training_data.py`) with other fills: the SQL questions name tables the `sql`
  adapter never saw, the arithmetic and support questions have new numbers, names and items (any prompt
  equal to a training prompt is dropped).
- **cross-domain**: prompts that need two adapters' skills (sql+math, support+math, support+sql), written
  for this bench from templates of its own, whose reference answers join the two adapters' styles: a
  support reply that works the refund out step by step and ends with `#### <n>`; a ```sql block followed
  by the arithmetic; a support reply that contains the query.

Each set is split in two by example index. The margin and temperature are chosen on the dev half by the
issue's goals: the lowest cross-domain NLL among the settings whose in-domain NLL stays within 2% of the
routed single adapter's. The tables report the test half, at that setting and at "always mix the top two"
(margin 1.0, its temperature chosen on dev), and the JSON keeps the whole dev grid. Prints the tables and
writes JSON.

Run: python bench/mixture_quality.py [--per-domain 24] [--per-pair 30]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import platform
import random
import statistics
import sys
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import httpx

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "demo"))
import make_training_data as demo_data  # noqa: E402
from transformers import AutoTokenizer  # noqa: E402

from experts.models import EMBEDDED_BASE, resolve_base_model  # noqa: E402
from routers.base import Decision, ScoredExpert  # noqa: E402
from routers.mixture import MixtureParams, routed_mixture  # noqa: E402
from tests.support.server_process import ServerProcess, write_config  # noqa: E402

ADAPTERS = ("sql", "math", "support")
GENERALIST = "base"
MARGINS = (0.02, 0.05, 0.1, 0.2, 1.0)
TEMPERATURES = (0.01, 0.02, 0.05, 0.1, 1e9)  # 1e9: equal weights
IN_DOMAIN_TOLERANCE = 1.02  # the goal: within 2% of the routed single adapter on single-domain prompts
UNSEEN_TABLES = {
    "patients": {"entity": "patient", "text": ["name", "ward"], "num": ["age", "weight"], "group": "ward"},
    "flights": {"entity": "flight", "text": ["origin", "carrier"], "num": ["delay", "seats"], "group": "carrier"},
    "books": {"entity": "book", "text": ["title", "genre"], "num": ["pages", "price"], "group": "genre"},
}


@dataclass
class Example:
    set: str  # "in-domain" or "cross-domain"
    domain: str  # the adapter, or the pair "support+math"
    question: str
    answer: str
    nll: dict[str, float] = field(default_factory=dict)  # condition -> per-token NLL
    ranking: list[tuple[str, float]] = field(default_factory=list)
    routed: str | None = None  # the routed expert; None: the generalist


def in_domain(per_domain: int) -> list[Example]:
    """Held-out examples from the training templates with other fills."""
    seen = {json.loads(line)["messages"][0]["content"] for name in ADAPTERS
            for line in (REPO / "demo" / "training" / f"{name}.jsonl").read_text().splitlines()}
    trained_tables = demo_data.TABLES
    demo_data.TABLES = UNSEEN_TABLES  # sql_examples reads the module's tables
    try:
        made = {"sql": demo_data.sql_examples(random.Random("bench-sql")),
                "math": demo_data.math_examples(random.Random("bench-math")),
                "support": demo_data.support_examples(random.Random("bench-support"))}
    finally:
        demo_data.TABLES = trained_tables
    out = []
    for domain, pairs in made.items():
        fresh = [(q, a) for q, a in dict(pairs).items() if q not in seen]
        random.Random(domain).shuffle(fresh)
        out += [Example("in-domain", domain, q, a) for q, a in fresh[:per_domain]]
    return out


SUPPORT_OPEN = "Thanks for contacting Switchyard Support! "
SUPPORT_CLOSE = " Is there anything else I can help you with?"


def _sql_math(rng: random.Random) -> tuple[str, str]:
    table, t = rng.choice(list(demo_data.TABLES.items()))
    num = rng.choice(t["num"])
    last, this = rng.randint(100, 900), rng.randint(100, 900)
    return (f"Give me the SQL for the total {num} of all {table}. Last month it was {last} and this month it is "
            f"{this}; what is the change?",
            f"```sql\nSELECT SUM({num}) FROM {table};\n```\nThe change is this month minus last month.\n"
            f"{this} - {last} = {this - last}\n#### {this - last}")


def _support_math(rng: random.Random) -> tuple[str, str]:
    if rng.random() < 0.5:
        times, price = rng.randint(2, 5), rng.choice([5, 8, 10, 12, 15, 20, 25])
        extra = (times - 1) * price
        return (f"I was charged {times} times for my {price} dollar subscription. How much will you refund?",
                f"{SUPPORT_OPEN}I'm sorry about the extra charges. You paid {times} x {price} = {times * price} "
                f"instead of {price}.\n{times * price} - {price} = {extra}\n#### {extra}\nI've refunded {extra} "
                f"dollars.{SUPPORT_CLOSE}")
    item = rng.choice(demo_data.ITEMS)
    count, broken = rng.randint(4, 30), rng.randint(1, 3)
    return (f"I ordered {count} of your {item}s and {broken} arrived broken. How many arrived in one piece?",
            f"{SUPPORT_OPEN}I'm sorry some of your {item}s arrived damaged.\n{count} - {broken} = {count - broken}"
            f"\n#### {count - broken}\nI've sent {broken} replacements at no cost.{SUPPORT_CLOSE}")


def _support_sql(rng: random.Random) -> tuple[str, str]:
    if rng.random() < 0.5:
        order = rng.randint(10000, 99999)
        return (f"A customer says order #{order} never arrived. Which SQL finds that order for the ticket?",
                f"{SUPPORT_OPEN}Here is the query for order #{order}:\n```sql\nSELECT * FROM orders WHERE id = "
                f"{order};\n```{SUPPORT_CLOSE}")
    status = rng.choice(["pending", "shipped", "returned", "cancelled"])
    return (f"For a support ticket, give me the SQL that counts the customer's {status} orders.",
            f"{SUPPORT_OPEN}Here is the query:\n```sql\nSELECT COUNT(*) FROM orders WHERE status = '{status}';"
            f"\n```{SUPPORT_CLOSE}")


CROSS: dict[str, Callable[[random.Random], tuple[str, str]]] = {
    "sql+math": _sql_math, "support+math": _support_math, "support+sql": _support_sql}


def cross_domain(per_pair: int) -> list[Example]:
    out = []
    for pair, make in CROSS.items():
        rng, made = random.Random(f"bench-{pair}"), {}
        while len(made) < per_pair:
            question, answer = make(rng)
            made.setdefault(question, answer)
        out += [Example("cross-domain", pair, q, a) for q, a in made.items()]
    return out


class Scorer:
    """Per-token NLL of an example's reference answer after its question, on the real server."""

    def __init__(self, client: httpx.AsyncClient, tokenizer: object) -> None:
        self._client = client
        self._tokenizer = tokenizer
        self._cache: dict[tuple[str, tuple[tuple[str, float], ...]], float] = {}

    async def nll(self, example: Example, weights: dict[str, float] | None) -> float:
        """`weights` None: the generalist; one name at weight 1: that adapter; else the mixture."""
        key = (example.question, tuple(sorted((weights or {}).items())))
        if key not in self._cache:
            self._cache[key] = await self._score(example, weights)
        return self._cache[key]

    async def _score(self, example: Example, weights: dict[str, float] | None) -> float:
        prefix = self._tokenizer.apply_chat_template([{"role": "user", "content": example.question}],
                                                     add_generation_prompt=True, tokenize=False)
        prefix_ids = self._tokenizer.encode(prefix)
        full_ids = self._tokenizer.encode(prefix + example.answer)
        assert full_ids[:len(prefix_ids)] == prefix_ids, "the answer's first token merged with the prompt's last"
        body: dict = {"prompt": prefix + example.answer, "max_tokens": 1, "temperature": 0, "echo": True,
                      "logprobs": 0}
        if weights is None:
            body["model"] = GENERALIST
        elif len(weights) == 1:
            body["model"] = next(iter(weights))
        else:
            body["model"], body["experts"] = "auto", weights
        response = await self._client.post("/v1/completions", json=body)
        response.raise_for_status()
        scores = response.json()["choices"][0]["logprobs"]["token_logprobs"][len(prefix_ids):len(full_ids)]
        return -sum(scores) / len(scores)


def _decision(example: Example) -> Decision:
    ranking = tuple(ScoredExpert(n, s) for n, s in example.ranking)
    best = example.routed
    return Decision(router="knn", expert=best, score=ranking[0].score if best else None, runner_up=None,
                    runner_up_score=None, fallback=best is None, reason="", threshold=0.0, ranking=ranking)


def mixture_weights(example: Example, margin: float, temperature: float) -> dict[str, float] | None:
    """The routed target under (margin, temperature): a mixture's weights, one adapter, or None."""
    if example.routed is None:
        return None
    mixed = routed_mixture(_decision(example), MixtureParams(2, margin, temperature), lambda name: name in ADAPTERS)
    return dict(mixed.components) if mixed is not None else {example.routed: 1.0}


async def score_all(examples: list[Example], scorer: Scorer, client: httpx.AsyncClient) -> None:
    for i, example in enumerate(examples):
        if i % 20 == 0:
            print(f"scoring example {i} of {len(examples)}", file=sys.stderr, flush=True)
        routed = (await client.post("/v1/route", json={"query": example.question})).json()
        example.ranking = [(r["name"], r["score"]) for r in routed["ranking"]]
        example.routed = None if routed["decision"]["fallback"] else routed["decision"]["expert"]
        example.nll["generalist"] = await scorer.nll(example, None)
        for name in ADAPTERS:
            example.nll[name] = await scorer.nll(example, {name: 1.0})
        example.nll["routed"] = example.nll[example.routed] if example.routed else example.nll["generalist"]
        example.nll["oracle"] = min(example.nll[c] for c in ("generalist", *ADAPTERS))
        for temperature in TEMPERATURES:
            for margin in MARGINS:
                weights = mixture_weights(example, margin, temperature)
                example.nll[f"mix m={margin} t={temperature:g}"] = (
                    example.nll["generalist"] if weights is None else await scorer.nll(example, weights))


def mean(examples: list[Example], condition: str) -> float:
    return statistics.fmean(e.nll[condition] for e in examples)


def table(examples: list[Example], setting: str) -> dict[str, dict[str, float]]:
    rows = {}
    for name in ("in-domain", "cross-domain"):
        chosen = [e for e in examples if e.set == name]
        rows[name] = {"n": len(chosen), "generalist": mean(chosen, "generalist"), "routed": mean(chosen, "routed"),
                      "mixture": mean(chosen, setting), "oracle": mean(chosen, "oracle"),
                      "mixed": sum(1 for e in chosen if _is_mixture(mixture_weights(e, *_parse(setting))))
                      / len(chosen)}
        rows[name]["mixture / routed"] = rows[name]["mixture"] / rows[name]["routed"]
    return rows


def _grid(examples: list[Example], settings: list[str]) -> dict[str, dict[str, float]]:
    """Mean NLL per setting and set, with the routed single adapter's for reference."""
    sets = {name: [e for e in examples if e.set == name] for name in ("in-domain", "cross-domain")}
    grid = {"routed": {name: mean(chosen, "routed") for name, chosen in sets.items()}}
    grid.update({s: {name: mean(chosen, s) for name, chosen in sets.items()} for s in settings})
    return grid


def _is_mixture(weights: dict[str, float] | None) -> bool:
    return weights is not None and len(weights) > 1


def _parse(setting: str) -> tuple[float, float]:
    margin, temperature = setting.removeprefix("mix m=").split(" t=")
    return float(margin), float(temperature)


def _print(title: str, rows: dict[str, dict[str, float]]) -> None:
    print(f"\n{title}")
    print(f"{'set':<14} {'n':>4} {'generalist':>11} {'routed':>8} {'mixture':>8} {'oracle':>8} {'mix/routed':>11} "
          f"{'mixed':>6}")
    for name, r in rows.items():
        print(f"{name:<14} {r['n']:>4} {r['generalist']:>11.3f} {r['routed']:>8.3f} {r['mixture']:>8.3f} "
              f"{r['oracle']:>8.3f} {r['mixture / routed']:>11.3f} {r['mixed']:>6.2f}")


async def run(args: argparse.Namespace) -> dict:
    examples = in_domain(args.per_domain) + cross_domain(args.per_pair)
    model_dir = resolve_base_model(EMBEDDED_BASE, Path.home() / ".cache" / "switchyard" / "models")
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    with tempfile.TemporaryDirectory() as root:
        proc = ServerProcess(write_config(Path(root)), Path(root) / "server.log").start()
        try:
            async with httpx.AsyncClient(base_url=proc.base_url, timeout=300) as client:
                await score_all(examples, Scorer(client, tokenizer), client)
        finally:
            proc.stop()
    dev = [e for i, e in enumerate(examples) if i % 2 == 0]
    test = [e for i, e in enumerate(examples) if i % 2 == 1]
    settings = [f"mix m={m} t={t:g}" for t in TEMPERATURES for m in MARGINS]
    dev_in = [e for e in dev if e.set == "in-domain"]
    dev_cross = [e for e in dev if e.set == "cross-domain"]
    allowed = [s for s in settings if mean(dev_in, s) <= IN_DOMAIN_TOLERANCE * mean(dev_in, "routed")]
    best = min(allowed or settings, key=lambda s: mean(dev_cross, s))
    always = min((f"mix m=1.0 t={t:g}" for t in TEMPERATURES), key=lambda s: mean(dev_cross, s))
    result = {"machine": platform.machine(), "chosen_on_dev": best,
              "settings_within_tolerance_on_dev": allowed, "always_top2_chosen_on_dev": always,
              "test": table(test, best), "test_always_top2": table(test, always), "dev": table(dev, best),
              "dev_grid": _grid(dev, settings),
              "test_grid_reported_not_used": _grid(test, settings),
              "examples": [{"set": e.set, "domain": e.domain, "question": e.question, "routed": e.routed,
                            "ranking": e.ranking, "nll": e.nll} for e in examples],
              "by_pair_test": {pair: {c: mean([e for e in test if e.domain == pair], c)
                                      for c in ("generalist", "routed", best, always, "oracle")}
                               for pair in (*ADAPTERS, *CROSS)}}
    _print(f"test half, per-token NLL; routed mixture at the dev-chosen setting ({best})", result["test"])
    _print(f"test half; always mix the top two, temperature chosen on dev ({always})", result["test_always_top2"])
    print(f"\nsettings within {IN_DOMAIN_TOLERANCE:.2f}x of routed on in-domain dev: {', '.join(allowed) or 'none'}")
    print("\nper domain (test): " + json.dumps({k: {c: round(v, 3) for c, v in r.items()}
                                                 for k, r in result["by_pair_test"].items()}))
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--per-domain", type=int, default=24, help="held-out examples per adapter's domain")
    parser.add_argument("--per-pair", type=int, default=30, help="cross-domain examples per pair of adapters")
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "mixture_quality.json")
    args = parser.parse_args()
    result = asyncio.run(run(args))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
