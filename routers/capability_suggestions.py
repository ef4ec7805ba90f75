"""Suggested capabilities: key phrases drawn from an expert's examples, for the operator to accept.

Class-based TF-IDF over word n-grams of two or three words: a phrase scores by how often it occurs in
this expert's examples and how few other experts' examples contain it, so "interest rate" rises for
banking and "how do I" sinks everywhere. Phrases that start or end with a function word are skipped, and
a phrase inside a better one is not offered twice. Single words are not offered: accepted as capabilities
they matched unrelated queries ("car", "account") and cost 1.6-2 points on CLINC150 at 5 and 20
examples, where two- and three-word phrases cost 0.2-0.4. Either way a phrase drawn from the examples
adds little the examples did not already say (README, Measured); the operator's own words add more. No
model, no training, deterministic; it lives in `routers/` because capabilities are routing texts.
"""

from __future__ import annotations

import math
import re
from collections import Counter
from collections.abc import Mapping, Sequence

STOPWORDS = frozenset(
    """
a about above after again against all am an and any are as at be because been before being below between both
but by can could did do does doing down during each few for from further had has have having he her here hers
him his how i if in into is it its itself just me more most my no nor not now of off on once only or other our
out over own please same she should so some such than that the their them then there these they this those
through to too under until up very was we were what when where which while who whom why will with would you
your yours yourself can't don't i'm i'd i've it's what's how's tell show give get want need like know let make
find much many one also whats got going go use back next last long able
""".split()  # noqa: SIM905 - a word list reads better as text
)
_WORD = re.compile(r"[a-z0-9][a-z0-9'+#.-]*[a-z0-9+#]|[a-z0-9]")


def _words(text: str) -> list[str]:
    return _WORD.findall(text.lower())


def _phrases(text: str, shortest: int = 2, longest: int = 3) -> set[str]:
    words = _words(text)
    out = set()
    for n in range(shortest, longest + 1):
        for i in range(len(words) - n + 1):
            gram = words[i:i + n]
            if gram[0] in STOPWORDS or gram[-1] in STOPWORDS or gram[0].isdigit() or gram[-1].isdigit():
                continue
            out.add(" ".join(gram))
    return out


def suggest_capabilities(expert: str, texts_by_expert: Mapping[str, Sequence[str]], count: int = 15,
                         min_support: int = 2) -> list[str]:
    """Up to `count` phrases for `expert`, best first, from the routing texts of every expert.

    A phrase must occur in at least `min_support` of the expert's examples (one when it has fewer than
    ten), so a single example's wording is not offered as a capability.
    """
    own = texts_by_expert.get(expert, ())
    if not own:
        return []
    support = Counter(p for text in own for p in _phrases(text))
    others = [name for name in texts_by_expert if name != expert]
    spread = Counter()
    for name in others:
        spread.update({p for text in texts_by_expert[name] for p in _phrases(text)})
    needed = min_support if len(own) >= 10 else 1
    scored = []
    for phrase, hits in support.items():
        if hits < needed:
            continue
        words = phrase.count(" ") + 1
        rarity = math.log((1 + len(others)) / (1 + spread[phrase])) + 1.0
        scored.append((hits / len(own) * rarity * (1 + 0.25 * (words - 1)), phrase))
    scored.sort(key=lambda item: (-item[0], item[1]))
    chosen: list[str] = []
    for _, phrase in scored:
        words = f" {phrase} "
        if any(words in f" {better} " or f" {better} " in words for better in chosen):
            continue  # a phrase inside a chosen one (or around it) says the same thing
        chosen.append(phrase)
        if len(chosen) == count:
            break
    return chosen
