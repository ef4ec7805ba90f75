"""What routing buys in answers: the per-token negative log-likelihood (NLL) of SGD's real assistant replies,
given the conversation so far, through the real server on the 16-domain library (`config/library.yaml`).

Each scored turn of `sgd_dev.jsonl` is sent as a chat request whose trailing assistant message is the real
reply, left open (`continue_final_message`) with `prompt_logprobs`: the reply's tokens' log-probabilities
are its likelihood under whatever answered. Routing reads the conversation up to the user turn, never the
reply. The answers are scored under:

- **generalist**: the base model alone (`model: base`);
- **routed, last message**: the expert `/v1/route` picks from the last user message alone (how routing
  worked before conversation context), then pinned;
- **routed, conversation**: `model: auto`, the default (the library config's fixed fallback threshold);
- **routed, calibrated fallback**: `model: auto` after `POST /admin/calibration` on the other half of dev;
- **oracle**: the turn's own domain expert, pinned (the generalist for Alarm, which has no expert);
- **mixture, top two**: the conversation's two best experts, pinned as an equal mixture.

Turns are drawn with a fixed seed from one half of dev's dialogues (odd positions) by kind: opening,
follow-up (the previous user turn's domain), switch; and Alarm's turns (out of scope: the generalist is the
right answer). The calibrated fallback is fitted on the other half (even positions), so it never sees the
turns it is scored on. Rows report the NLL summed over reply tokens divided by their count, its ratio to the
generalist's and the oracle's, and the routing decision's accuracy on the same turns. A request whose
(model, mixture) equals one already scored for the turn reuses that score: decoding is deterministic.

Run: python bench/answer_quality.py [--per-kind 80] [--alarm 60] [--out bench/results/answer_quality.json]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import sys
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import httpx

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
from transformers import AutoTokenizer  # noqa: E402

from experts.models import EMBEDDED_BASE, resolve_base_model  # noqa: E402
from library.dialogues import OUT_OF_SCOPE, SGD_DIR, ScoredTurn, load_dialogues, scored_turns  # noqa: E402
from library.make_experts import expert_name  # noqa: E402
from tests.support.server_process import ADMIN_TOKEN, ServerProcess  # noqa: E402

GENERALIST = "base"
MAX_TOKENS = 768  # conversation plus reply; older exchanges are dropped first, for every condition alike
SCORE = {"add_generation_prompt": False, "continue_final_message": True, "prompt_logprobs": 0, "max_tokens": 1,
         "temperature": 0}
GROUPS = ("all in scope", "opening", "follow-up", "switch", "Alarm (out of scope)")


@dataclass
class Case:
    """One scored turn, cut to fit, with where its reply's tokens start and what each condition scored."""

    turn: ScoredTurn
    messages: list[dict[str, str]]  # the conversation and the reply, as sent
    ids: list[int]  # the whole prompt as the server renders it
    opened: int  # the reply's first token
    nll: dict[str, float] = field(default_factory=dict)  # condition -> summed NLL of the reply
    chose: dict[str, str] = field(default_factory=dict)  # condition -> the expert (or generalist) that answered

    @property
    def tokens(self) -> int:
        return len(self.ids) - self.opened

    @property
    def truth(self) -> str:
        return GENERALIST if self.turn.domain == OUT_OF_SCOPE else expert_name(self.turn.domain)

    @property
    def group(self) -> str:
        return "Alarm (out of scope)" if self.turn.domain == OUT_OF_SCOPE else self.turn.kind


def render(tokenizer, messages: list[dict[str, str]], **options: bool) -> list[int]:
    return list(tokenizer.apply_chat_template(messages, tokenize=True, return_dict=True, **options)["input_ids"])


def make_case(tokenizer, turn: ScoredTurn) -> Case | None:
    """The turn with its oldest exchanges dropped until it fits; None if the reply's tokens cannot be told
    apart from the prompt's (a merge across the boundary)."""
    context = list(turn.context)
    while True:
        messages = [*context, {"role": "assistant", "content": turn.reply}]
        ids = render(tokenizer, messages, continue_final_message=True)
        if len(ids) <= MAX_TOKENS or len(context) <= 1:
            break
        context = context[2:]
    opened = render(tokenizer, context, add_generation_prompt=True)
    if ids[:len(opened)] != opened or len(ids) == len(opened):
        return None
    return Case(turn, messages, ids, len(opened))


def draw(dialogues: list[dict], per_kind: int, alarm: int, seed: int) -> list[ScoredTurn]:
    pools: dict[str, list[ScoredTurn]] = {}
    for dialogue in dialogues:
        for turn in scored_turns(dialogue):
            group = "Alarm (out of scope)" if turn.domain == OUT_OF_SCOPE else turn.kind
            pools.setdefault(group, []).append(turn)
    rng = random.Random(seed)
    chosen = []
    for group in sorted(pools):
        wanted = alarm if group.startswith("Alarm") else per_kind
        chosen += rng.sample(pools[group], min(wanted, len(pools[group])))
    return chosen


class Scorer:
    """The server's answers, scored: one chat request per (turn, model or mixture), cached per turn."""

    def __init__(self, base_url: str) -> None:
        self.http = httpx.Client(base_url=base_url, timeout=600, headers={"Authorization": f"Bearer {ADMIN_TOKEN}"})
        self._cache: dict[tuple[int, str], tuple[float, str]] = {}
        self.requests = 0

    def score(self, number: int, case: Case, model: str, experts: dict[str, float] | None = None) -> tuple[float, str]:
        """The reply's summed NLL, and the expert that answered (the components, `+`-joined, for a mixture).

        `auto` is always sent (routing decides); a pinned model or mixture reuses what the same turn scored
        under the same answerer."""
        pinned = model if experts is None else "+".join(sorted(experts))
        if model != "auto" and (number, pinned) in self._cache:
            return self._cache[(number, pinned)]
        body = {"model": model, "messages": case.messages, **SCORE}
        if experts is not None:
            body["experts"] = experts
        response = self.http.post("/v1/chat/completions", json=body)
        response.raise_for_status()
        answer = response.json()
        self.requests += 1
        entries = answer["prompt_logprobs"]
        nll = -sum(entries[i][str(case.ids[i])]["logprob"] for i in range(case.opened, len(case.ids)))
        record = answer["switchyard"]
        chose = "+".join(sorted(e["name"] for e in record["experts"])) if record.get("experts") else record["expert"]
        self._cache[(number, chose)] = (nll, chose)
        return nll, chose

    def route(self, messages: list[dict[str, str]], top_n: int = 1) -> list[str]:
        """The experts `/v1/route` ranks best for `messages` (the generalist first when it falls back)."""
        answer = self.http.post("/v1/route", json={"messages": messages, "top_n": top_n}).json()
        if top_n == 1:
            return [answer["decision"]["expert"]]
        return [entry["name"] for entry in answer["ranking"][:top_n]]


Condition = Callable[[Scorer, int, Case], tuple[float, str]]


def last_message(scorer: Scorer, number: int, case: Case) -> tuple[float, str]:
    (expert,) = scorer.route([case.turn.context[-1]])
    return scorer.score(number, case, expert)


def top_two(scorer: Scorer, number: int, case: Case) -> tuple[float, str]:
    first, second = scorer.route(case.turn.context, top_n=2)
    return scorer.score(number, case, "auto", experts={first: 0.5, second: 0.5})


# In the order they run: `auto` first, so the pinned conditions reuse its answers where they agree.
CONDITIONS: dict[str, Condition] = {
    "routed, conversation (default)": lambda scorer, number, case: scorer.score(number, case, "auto"),
    "oracle (the turn's own expert)": lambda scorer, number, case: scorer.score(number, case, case.truth),
    "routed, last message": last_message,
    "generalist": lambda scorer, number, case: scorer.score(number, case, GENERALIST),
    "mixture, top two": top_two,
}
CALIBRATED = "routed, conversation, calibrated fallback"
ROUTED = ("routed, last message", "routed, conversation (default)", CALIBRATED)


def run_condition(scorer: Scorer, name: str, condition: Condition, cases: list[Case], workers: int) -> float:
    started = time.monotonic()

    def one(item: tuple[int, Case]) -> None:
        number, case = item
        case.nll[name], case.chose[name] = condition(scorer, number, case)

    with ThreadPoolExecutor(workers) as pool:
        list(pool.map(one, enumerate(cases)))
    return time.monotonic() - started


def summary(cases: list[Case], conditions: list[str]) -> list[dict]:
    rows = []
    for group in GROUPS:
        chosen = [c for c in cases if (c.group == group if group != "all in scope" else c.turn.domain != OUT_OF_SCOPE)]
        tokens = sum(c.tokens for c in chosen)
        per_token = {name: sum(c.nll[name] for c in chosen) / tokens for name in conditions}
        for name in conditions:
            accurate = (sum(c.chose[name] == c.truth for c in chosen) / len(chosen)) if name in ROUTED else None
            rows.append({"group": group, "condition": name, "turns": len(chosen), "reply_tokens": tokens,
                         "nll_per_token": per_token[name],
                         "vs_generalist": per_token[name] / per_token["generalist"],
                         "vs_oracle": per_token[name] / per_token["oracle (the turn's own expert)"],
                         "decision_accuracy": accurate})
    return rows


def print_table(rows: list[dict]) -> None:
    print("| turns | condition | n | NLL / token | vs generalist | vs oracle | decision accuracy |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        accuracy = f"{r['decision_accuracy']:.1%}" if r["decision_accuracy"] is not None else "-"
        print(f"| {r['group']} | {r['condition']} | {r['turns']} | {r['nll_per_token']:.3f} | "
              f"{r['vs_generalist']:.2f}x | {r['vs_oracle']:.3f}x | {accuracy} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--per-kind", type=int, default=80, help="turns of each kind (opening, follow-up, switch)")
    parser.add_argument("--alarm", type=int, default=60, help="Alarm (out-of-scope) turns")
    parser.add_argument("--workers", type=int, default=4, help="concurrent requests (the server batches them)")
    parser.add_argument("--config", type=Path, default=REPO / "config" / "library.yaml")
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "answer_quality.json")
    args = parser.parse_args()

    dialogues = load_dialogues(SGD_DIR / "sgd_dev.jsonl")
    measured, calibration = dialogues[1::2], dialogues[0::2]
    tokenizer = AutoTokenizer.from_pretrained(resolve_base_model(EMBEDDED_BASE, Path.home() / ".cache" / "switchyard"
                                                                 / "models"))
    cases = [c for c in (make_case(tokenizer, t) for t in draw(measured, args.per_kind, args.alarm, seed=0)) if c]
    print(f"{len(cases)} turns from {len(measured)} dev dialogues; calibration on the other {len(calibration)}")
    seconds: dict[str, float] = {}
    with tempfile.TemporaryDirectory() as tmp:
        os.environ["SWITCHYARD_SERVER__DATA_DIR"] = str(Path(tmp) / "data")
        server = ServerProcess(args.config, Path(tmp) / "server.log").start(timeout=900)
        try:
            scorer = Scorer(server.base_url)
            for name, condition in CONDITIONS.items():
                seconds[name] = run_condition(scorer, name, condition, cases, args.workers)
                print(f"{name}: {seconds[name]:.0f} s", flush=True)
            calibrated = scorer.http.post("/admin/calibration", json={"conversations": [
                {"turns": d["turns"]} for d in calibration]}, timeout=1800)
            calibrated.raise_for_status()
            seconds[CALIBRATED] = run_condition(scorer, CALIBRATED, CONDITIONS["routed, conversation (default)"],
                                                cases, args.workers)
            fitted = calibrated.json()
        finally:
            server.stop()
    names = ["generalist", "routed, last message", "routed, conversation (default)", CALIBRATED,
             "oracle (the turn's own expert)", "mixture, top two"]
    rows = summary(cases, names)
    print_table(rows)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({
        "machine": platform.platform(), "cpus": os.cpu_count(), "turns": len(cases), "requests": scorer.requests,
        "seconds": seconds, "calibration": fitted, "rows": rows,
        "per_turn": [{"dialogue": c.turn.dialogue, "domain": c.turn.domain, "kind": c.turn.kind, "tokens": c.tokens,
                      "nll": c.nll, "chose": c.chose} for c in cases],
    }, indent=2))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
