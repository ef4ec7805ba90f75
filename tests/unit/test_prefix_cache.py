"""Prefix caching changes how much of a prompt is computed, never what is generated: with greedy decoding
the real backend (SmolLM2 and the demo adapters) answers the same with the cache on and off, for mixed
batches, for the generalist, and for prompts whose system message differs from the template's opening."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from experts.adapters import check_adapter_files
from experts.backends.base import GenerationRequest, SamplingParams
from experts.backends.prefix_cache import template_prefix
from experts.backends.transformers_peft import TransformersBackend
from experts.models import EMBEDDED_BASE, resolve_base_model
from tests.support.server_process import REPO

REQUESTS = [
    ("sql", [{"role": "user", "content": "List all customers from Paris."}]),
    ("math", [{"role": "user", "content": "Ana has 7 pens and buys 5 more. How many pens?"}]),
    (None, [{"role": "user", "content": "Name three colours."}]),
    ("support", [{"role": "user", "content": "My order never arrived."}]),
    ("sql", [{"role": "system", "content": "Answer in SQL only."},  # not covered by the cached opening
             {"role": "user", "content": "Count the employees per department."}]),
    ("math", [{"role": "user", "content": "What is 12 times 11?"}]),
]


async def answers(prefix_caching: bool) -> tuple[list[str], TransformersBackend]:
    model_dir = resolve_base_model(EMBEDDED_BASE, Path.home() / ".cache" / "switchyard" / "models")
    backend = TransformersBackend(Path(model_dir), "cpu", 2048, max_loras=4, max_cpu_loras=0, max_batch=8,
                                  prefix_caching=prefix_caching)
    for name in ("sql", "math", "support"):
        await backend.load_adapter(name, check_adapter_files(REPO / "demo" / "adapters" / name, 64))

    async def one(adapter: str | None, messages: list[dict[str, str]]) -> str:
        request = GenerationRequest(messages, adapter, SamplingParams(24, 0.0, 1.0))
        return "".join([chunk.text async for chunk in backend.generate(request)])

    alone = [await one(*r) for r in REQUESTS]  # first use of each adapter: the opening is computed
    together = await asyncio.gather(*(one(*r) for r in REQUESTS))  # a mixed batch from the cache
    assert list(together) == alone
    return alone, backend


@pytest.fixture(scope="module")
def runs() -> dict[bool, tuple[list[str], TransformersBackend]]:
    return {on: asyncio.run(answers(on)) for on in (False, True)}


def test_the_opening_is_the_templates_system_message_and_user_header(runs: dict) -> None:
    backend = runs[True][1]
    prefix = backend._tokenizer.decode(template_prefix(backend._tokenizer))  # noqa: SLF001
    assert prefix.startswith("<|im_start|>system\n") and "<|im_start|>user" in prefix
    assert len(template_prefix(backend._tokenizer)) >= 20  # noqa: SLF001


def test_greedy_answers_are_the_same_with_and_without_the_cache(runs: dict) -> None:
    assert runs[True][0] == runs[False][0]
    assert len(set(runs[True][0])) == len(REQUESTS)  # distinct answers: a mix-up of rows would show


def test_the_cache_is_used_and_forgets_unloaded_adapters(runs: dict) -> None:
    backend = runs[True][1]
    prefixes = backend._prefixes  # noqa: SLF001
    assert prefixes is not None and prefixes.hits > 0 and prefixes.get("sql") is not None
    backend._forget("sql")  # noqa: SLF001 - what unload_adapter runs on the model thread
    assert prefixes.get("sql") is None and prefixes.get("math") is not None
