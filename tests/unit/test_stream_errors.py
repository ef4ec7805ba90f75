"""A failure after a stream has started reaches the client as an SSE error event in OpenAI's shape, and is
counted as an error: the status line has gone, so a dropped connection would say nothing."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator

from experts.backends import GenerationChunk
from experts.errors import AdapterUnavailable
from server.chat.generation import ChoiceStream, Generation, GenerationService
from server.chat.service import ChatRun, ChatService
from server.observability.metrics import Metrics
from server.protocol import ChatCompletionRequest, RoutingInfo
from server.routing.service import Target
from server.runtime.admission import Admission, Slot


class _Routing:
    def expect_reply(self, text: str) -> None:
        raise AssertionError("a failed stream has no reply to remember")


async def _events(failure: Exception) -> tuple[list[str], Metrics]:
    async def chunks() -> AsyncIterator[GenerationChunk]:
        yield GenerationChunk(text="Hel")
        yield GenerationChunk(text="lo")
        raise failure

    generator = chunks()
    info = RoutingInfo(expert="sql", kind="adapter", score=0.9, runner_up=None, runner_up_score=None,
                       fallback=False, reason="test", router="knn", threshold=0.3, registry_version=1,
                       routing_ms=1.0)
    generation = Generation(target=Target(expert=None, info=info),
                            choices=[ChoiceStream(0, generator, await generator.__anext__())],
                            completion_id="chatcmpl-test", created=0, slot=Slot(Admission(1, 0, 1)),
                            deadline=time.monotonic() + 60, started=time.monotonic())
    run = ChatRun(ChatCompletionRequest(model="sql", stream=True, messages=[{"role": "user", "content": "hi"}]),
                  generation)
    generations = GenerationService.__new__(GenerationService)  # only the streaming half is under test
    generations._metrics, generations._routing = Metrics(), _Routing()
    service = ChatService(generations, None)  # type: ignore[arg-type]
    return [event async for event in service.stream(run)], generations._metrics


def test_a_mid_stream_failure_ends_with_an_error_event_and_done() -> None:
    events, metrics = asyncio.run(_events(RuntimeError("CUDA error: device-side assert")))
    assert json.loads(events[1].removeprefix("data: "))["choices"][0]["delta"]["content"] == "Hel"
    error = json.loads(events[-2].removeprefix("data: "))["error"]
    assert error == {"message": "generation failed mid-stream", "type": "server_error", "param": None,
                     "code": "internal_error"}  # the internal cause goes to the log, not the client
    assert events[-1] == "data: [DONE]\n\n"
    assert metrics.requests.labels("chat.completions", "sql", "error")._value.get() == 1


def test_a_known_failure_keeps_its_message_and_code() -> None:
    events, _ = asyncio.run(_events(AdapterUnavailable("sql-v1", "its files were deleted")))
    error = json.loads(events[-2].removeprefix("data: "))["error"]
    assert error["code"] == "expert_failed" and "could not be activated" in error["message"]
