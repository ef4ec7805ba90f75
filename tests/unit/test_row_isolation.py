"""A row's failure is that row's alone, on the real transformers backend (SmolLM2 and two demo adapters).

An exception forced into one row's masking, grammar, sampling, detokenising or stopping fails that request
with a clear error while the other rows of the same batch (adapters, the generalist, a constrained row)
answer exactly what they answer alone. A job that fails outside any one row fails every row it held, and
the scheduler serves the next request. A model thread stuck on one job shows in `health()`, and new
requests are refused rather than left waiting.
"""

from __future__ import annotations

import asyncio
import contextvars
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from experts.adapters import check_adapter_files
from experts.backends import continuous_batching, transformers_peft
from experts.backends.base import GenerationRequest, OutputConstraint, SamplingParams
from experts.backends.transformers_peft import TransformersBackend
from experts.errors import ConstraintRejected, EngineUnavailable, RowFailed
from experts.models import EMBEDDED_BASE, resolve_base_model
from server.chat.structured import schema_constraint
from tests.support.server_process import REPO

TICKET = schema_constraint({"type": "object", "required": ["intent", "urgent"], "additionalProperties": False,
                            "properties": {"intent": {"type": "string"}, "urgent": {"type": "boolean"}}}, "test")
REQUESTS: list[tuple[str | None, str, OutputConstraint | None]] = [
    ("sql", "List all customers from Paris.", None),
    (None, "Name three colours.", None),
    ("math", "Ana has 7 pens and buys 5 more. How many pens?", None),
    (None, "My card was charged twice. Answer as JSON.", TICKET),
]
VICTIM = contextvars.ContextVar("victim", default=False)  # set in the task of the row to break


@pytest.fixture(scope="module")
def backend() -> Iterator[TransformersBackend]:
    model_dir = resolve_base_model(EMBEDDED_BASE, Path.home() / ".cache" / "switchyard" / "models")
    backend = TransformersBackend(Path(model_dir), "cpu", 2048, max_loras=4, max_cpu_loras=0, max_batch=8)

    async def load() -> None:
        for name in ("sql", "math"):
            await backend.load_adapter(name, check_adapter_files(REPO / "demo" / "adapters" / name, 64))

    asyncio.run(load())
    yield backend
    asyncio.run(backend.close())


async def answer(backend: TransformersBackend, key: str | None, text: str, constraint: OutputConstraint | None,
                 victim: bool = False) -> str | BaseException:
    """Greedy; the victim carries seed 666 (greedy ignores it), which the sampling fault looks for."""
    VICTIM.set(victim)
    sampling = SamplingParams(16, 0.0, 1.0, constraint=constraint, seed=666 if victim else None)
    try:
        parts = [chunk.text async for chunk in backend.generate(
            GenerationRequest([{"role": "user", "content": text}], key, sampling))]
    except Exception as exc:  # noqa: BLE001 - the outcome under test
        return exc
    return "".join(parts)


async def batch(backend: TransformersBackend, victim: tuple[str | None, str, OutputConstraint | None]
                ) -> tuple[list[str | BaseException], str | BaseException]:
    """Every request of `REQUESTS` and the victim, started together so they share batches."""
    jobs = [asyncio.create_task(answer(backend, *request)) for request in REQUESTS]
    broken = asyncio.create_task(answer(backend, *victim, victim=True))
    return list(await asyncio.gather(*jobs)), await broken


@pytest.fixture(scope="module")
def solo(backend: TransformersBackend) -> list[str | BaseException]:
    answers = [asyncio.run(answer(backend, *request)) for request in REQUESTS]
    assert all(isinstance(a, str) and a for a in answers) and len(set(answers)) == len(answers), answers
    return answers


class _BrokenMask:
    """A grammar that raises where the fault is set: filling the mask, or accepting a token."""

    def __init__(self, real: Any, where: str) -> None:
        self._real, self._where = real, where

    def apply(self, logits: Any, remaining: int, max_tokens: int) -> None:
        if self._where == "mask":
            raise RuntimeError("forced: mask")
        self._real.apply(logits, remaining, max_tokens)

    def accept(self, token: int) -> None:
        if self._where == "accept":
            raise RuntimeError("forced: accept")
        self._real.accept(token)

    @property
    def complete(self) -> bool:
        return self._real.complete


def _inject(monkeypatch: pytest.MonkeyPatch, backend: TransformersBackend, fault: str) -> None:
    if fault in ("mask", "accept"):
        real = backend._token_mask
        monkeypatch.setattr(backend, "_token_mask", lambda c: _BrokenMask(real(c), fault) if VICTIM.get()
                            else real(c))
    elif fault == "sample":
        real_sample = continuous_batching.sample_next_token

        def sample(logits: Any, params: SamplingParams, generator: Any) -> int:
            if params.seed == 666:
                raise RuntimeError("forced: sample")
            return real_sample(logits, params, generator)

        monkeypatch.setattr(continuous_batching, "sample_next_token", sample)
    elif fault in ("detokenise", "stop"):  # on the event loop, in the request's own task
        name, method = ("IncrementalDecoder", "push") if fault == "detokenise" else ("StreamedText", "update")
        monkeypatch.setattr(transformers_peft, name, _raising_for_the_victim(getattr(transformers_peft, name),
                                                                             method, f"forced: {fault}"))


def _raising_for_the_victim(cls: type, method: str, message: str) -> type:
    """`cls` with `method` raising in the victim's task, and as before elsewhere."""
    original = getattr(cls, method)

    def broken(self: Any, *args: Any) -> Any:
        if VICTIM.get():
            raise RuntimeError(message)
        return original(self, *args)

    return type(f"Broken{cls.__name__}", (cls,), {method: broken})


@pytest.mark.parametrize("fault", ["mask", "accept", "sample", "detokenise", "stop"])
def test_one_rows_failure_is_its_own(backend: TransformersBackend, solo: list[str], fault: str,
                                     monkeypatch: pytest.MonkeyPatch) -> None:
    _inject(monkeypatch, backend, fault)
    victim = ("sql", "Show every order from May.", TICKET if fault in ("mask", "accept") else None)
    others, broken = asyncio.run(batch(backend, victim))
    assert isinstance(broken, Exception) and f"forced: {fault}" in str(broken), broken
    if fault in ("mask", "accept", "sample"):  # on the model thread: reported as the row's own failure
        assert isinstance(broken, RowFailed)
    assert others == solo
    monkeypatch.undo()
    assert asyncio.run(answer(backend, *REQUESTS[0])) == solo[0]  # and the backend serves on


def test_a_failed_job_fails_its_rows_and_the_scheduler_serves_on(backend: TransformersBackend, solo: list[str],
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    scheduler = backend._scheduler
    real_merge = scheduler._merge
    calls = []

    def merge_once(*args: Any) -> None:
        calls.append(1)
        if len(calls) == 1:
            raise RuntimeError("forced: merge")
        real_merge(*args)

    monkeypatch.setattr(scheduler, "_merge", merge_once)
    failures = scheduler.batch_failures
    first = asyncio.run(answer(backend, *REQUESTS[1]))
    assert isinstance(first, RowFailed) and "forced: merge" in str(first)
    assert scheduler.batch_failures == failures + 1
    assert asyncio.run(answer(backend, *REQUESTS[1])) == solo[1]


def test_a_grammar_that_allows_no_token_is_refused_and_nothing_hangs(backend: TransformersBackend,
                                                                    solo: list[str]) -> None:
    poison = OutputConstraint('{"$defs": {"a": {"$ref": "#/$defs/a"}}, "$ref": "#/$defs/a"}', "")
    with pytest.raises(ConstraintRejected):
        backend._token_mask(poison)
    outcome = asyncio.run(answer(backend, None, "hi", poison))
    assert isinstance(outcome, ConstraintRejected)
    assert asyncio.run(answer(backend, *REQUESTS[1])) == solo[1]


def test_a_stuck_model_thread_shows_in_health_and_fails_waiting_requests(backend: TransformersBackend,
                                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(transformers_peft, "STALL_SECONDS", 0.4)
    release, started = threading.Event(), threading.Event()

    def stuck() -> None:
        started.set()
        release.wait(30)

    async def scenario() -> tuple[BaseException | str, list[str], BaseException | str, list[str]]:
        backend._executor.submit(backend._scheduler._guarded, stuck)
        started.wait(5)
        waiting = await answer(backend, None, "hi", None)  # admitted at once, then failed by the watchdog
        problems = await backend.health()
        refused = await answer(backend, None, "hi", None)  # refused at the door
        release.set()
        await asyncio.sleep(0.2)
        return waiting, problems, refused, await backend.health()

    waiting, problems, refused, after = asyncio.run(scenario())
    assert isinstance(waiting, EngineUnavailable), waiting
    assert any("model thread" in p for p in problems), problems
    assert isinstance(refused, EngineUnavailable)
    assert not any("model thread has been on one job" in p for p in after), after
