"""Routed mixtures' bookkeeping, in process on the deterministic backend: with routed mixtures on and a margin
wide enough that a query between two adapters is mixed, the record, the headers and the model name say
which experts answered with what weights, and the model list documents the syntax. (What a mixture
computes is tests/e2e/backends/test_mixtures.py's, on both real backends.)"""

from __future__ import annotations

import openai

APP_SETTINGS = {"mixture_max_experts": 2, "mixture_margin": 0.5, "mixture_temperature": 0.05}
CROSS = "Write the SQL query for the average monthly growth rate of sales, and explain the arithmetic."


def test_routed_mixture_says_which_experts_and_why(client: openai.OpenAI) -> None:
    raw = client.chat.completions.with_raw_response.create(
        model="auto", messages=[{"role": "user", "content": CROSS}], max_tokens=8, temperature=0)
    completion = raw.parse()
    record = completion.model_extra["switchyard"]
    assert record["kind"] == "mixture", record
    names = [c["name"] for c in record["experts"]]
    assert len(names) == 2 and "sql" in names
    assert abs(sum(c["weight"] for c in record["experts"]) - 1) < 2e-3
    assert "mixed" in record["reason"]
    assert raw.headers["x-switchyard-experts"] == ",".join(f"{c['name']}={c['weight']:.3f}" for c in record["experts"])
    assert completion.model == "+".join(names)


def test_models_document_the_mixture_syntax(client: openai.OpenAI) -> None:
    cards = {card.id: card.model_extra for card in client.models.list().data}
    assert "'a+b'" in cards["auto"]["description"] and "auto mixes up to 2 experts" in cards["auto"]["description"]
    assert cards["sql"]["mixable"] and cards["base"]["mixable"]
