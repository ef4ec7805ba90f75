"""The streaming detokenizer gives exactly what decoding the whole completion gives, with the base
model's real tokenizer (byte-level BPE: accents, CJK and emoji span several tokens)."""

from __future__ import annotations

import random
from pathlib import Path

import pytest
from transformers import AutoTokenizer

from experts.backends.sampling import IncrementalDecoder
from experts.models import EMBEDDED_BASE, resolve_base_model

TEXTS = [
    "SELECT name, AVG(salary) FROM employees GROUP BY name;",
    "Café au lait, naïve façade: ¿qué tal? 東京タワーは高い。 🚀🎉 done.",
    "  leading spaces\n\ttabs and\r\nnewlines  ",
    "#### 42\nThanks for contacting Switchyard Support!",
]


@pytest.fixture(scope="module")
def tokenizer() -> object:
    model_dir = resolve_base_model(EMBEDDED_BASE, Path.home() / ".cache" / "switchyard" / "models")
    return AutoTokenizer.from_pretrained(model_dir)


def stream(tokenizer: object, ids: list[int]) -> tuple[str, list[str]]:
    decoder = IncrementalDecoder(tokenizer)
    deltas = [decoder.push(i) for i in ids]
    deltas.append(decoder.finish())
    return decoder.text, deltas


@pytest.mark.parametrize("text", TEXTS)
def test_streamed_text_equals_the_whole_decode(tokenizer: object, text: str) -> None:
    ids = tokenizer.encode(text, add_special_tokens=False)
    streamed, deltas = stream(tokenizer, ids)
    assert streamed == tokenizer.decode(ids, skip_special_tokens=True) == text
    assert "".join(deltas) == streamed
    assert not any("\ufffd" in d for d in deltas)  # an incomplete character is never sent


def test_random_token_sequences_and_special_tokens(tokenizer: object) -> None:
    rng = random.Random(0)
    special = tokenizer.all_special_ids
    for _ in range(50):
        ids = [rng.randrange(tokenizer.vocab_size) for _ in range(rng.randrange(1, 40))]
        ids.insert(rng.randrange(len(ids) + 1), rng.choice(special))
        streamed, _ = stream(tokenizer, ids)
        assert streamed == tokenizer.decode(ids, skip_special_tokens=True).rstrip("\ufffd")


def test_each_token_decodes_a_bounded_window(tokenizer: object) -> None:
    """The work per token does not grow with the completion: at most the tokens since the last
    complete character, plus one token of context, are decoded."""
    calls: list[int] = []

    class Counting:
        def decode(self, ids: list[int], skip_special_tokens: bool) -> str:
            calls.append(len(ids))
            return tokenizer.decode(ids, skip_special_tokens=skip_special_tokens)

    ids = tokenizer.encode(TEXTS[0] * 20, add_special_tokens=False)
    decoder = IncrementalDecoder(Counting())
    for i in ids:
        decoder.push(i)
    assert decoder.text == TEXTS[0] * 20
    assert max(calls) <= 4
