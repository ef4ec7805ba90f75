"""The SGD conversations as the library uses them: training replies, example turns and scored turns.

One home for reading `../shared/data/sgd`, so the training script, the library config and the answer-quality
bench agree on what a turn, its domain and its type are.
"""

from __future__ import annotations

import json
import random
import re
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

from routers.labelled_data import turn_kind

SGD_DIR = Path(__file__).resolve().parent.parent.parent / "shared" / "data" / "sgd"
OUT_OF_SCOPE = "Alarm"  # in dev, not in train: the generalist is the right answer

Message = dict[str, str]


@dataclass(frozen=True)
class ScoredTurn:
    """One assistant reply to score: the conversation up to its user turn, the reply, and what it is.

    It keeps the dialogue's turns and its position, not a copy of the conversation so far: train holds
    111,878 of these, and copying each one's context costs gigabytes."""

    dialogue: str
    turns: list[dict] = field(repr=False)  # the whole dialogue, as read
    position: int  # the user turn the reply answers
    domain: str  # the user turn's domain: the expert that should write the reply
    kind: str  # "opening", "follow-up" (same domain as the previous user turn) or "switch"

    @property
    def context(self) -> list[Message]:
        """The conversation up to and including the user turn, as chat messages."""
        return [{"role": t["role"], "content": t["content"]} for t in self.turns[: self.position + 1]]

    @property
    def reply(self) -> str:
        return self.turns[self.position + 1]["content"]


def load_dialogues(path: Path) -> list[dict]:
    with path.open() as lines:
        return [json.loads(line) for line in lines if line.strip()]


def scored_turns(dialogue: dict) -> list[ScoredTurn]:
    """Every (conversation so far, assistant reply) pair in one dialogue, with its domain and turn type."""
    turns = dialogue["turns"]
    found = []
    previous_domain = None
    for i, turn in enumerate(turns):
        if turn["role"] != "user":
            continue
        domain = turn["domain"]
        kind = turn_kind(previous_domain, domain)
        previous_domain = domain
        if i + 1 < len(turns) and turns[i + 1]["role"] == "assistant":
            found.append(ScoredTurn(dialogue["id"], turns, i, domain, kind))
    return found


def reply_examples(dialogues: list[dict], per_domain: int, seed: int) -> dict[str, list[list[Message]]]:
    """A seeded sample of `per_domain` conversations ending in a reply, for each domain."""
    pools: dict[str, list[ScoredTurn]] = defaultdict(list)
    for dialogue in dialogues:
        for turn in scored_turns(dialogue):
            pools[turn.domain].append(turn)
    rng = random.Random(seed)
    sample = {}
    for domain in sorted(pools):
        chosen = rng.sample(pools[domain], min(per_domain, len(pools[domain])))
        sample[domain] = [t.context + [{"role": "assistant", "content": t.reply}] for t in chosen]
    return sample


def examples_by_domain(dialogues: list[dict], per_domain: int) -> dict[str, list[str]]:
    """A seeded sample of user turns per domain: an expert's routing examples (the library's, and
    `bench/conversation_routing.py`'s, so its figures hold for the library)."""
    by_domain: dict[str, list[str]] = defaultdict(list)
    for dialogue in dialogues:
        for turn in dialogue["turns"]:
            if turn["role"] == "user":
                by_domain[turn["domain"]].append(turn["content"])
    rng = random.Random(0)
    return {domain: rng.sample(texts, min(per_domain, len(texts))) for domain, texts in sorted(by_domain.items())}


def domain_phrase(domain: str) -> str:
    """SGD's domain name as a capability phrase: "RentalCars" -> "rental cars"."""
    return re.sub(r"(?<!^)(?=[A-Z])", " ", domain).lower()
