"""The one wrap-up of every streamed answer (chat, completions, responses): once the status line is sent,
a failure can only be told in the stream, as an error event in OpenAI's shape (as vLLM does), and it is
counted; the `[DONE]` marker ends the chat and completions streams either way; the generation is closed
whatever happens, so a client that goes away mid-stream stops generation and frees its slot."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable

from server.errors import error_event

DONE = "data: [DONE]\n\n"


async def event_stream(events: AsyncIterator[str], *, on_error: Callable[[], None],
                       close: Callable[[], Awaitable[None]], done_marker: bool = True) -> AsyncIterator[str]:
    """`events` (an endpoint's server-sent events) with the wrap-up every stream shares."""
    try:
        async for event in events:
            yield event
        if done_marker:
            yield DONE
    except Exception as exc:  # the status line is gone: say what failed in the stream
        yield error_event(exc)
        on_error()
        if done_marker:
            yield DONE
    finally:
        await events.aclose()  # type: ignore[attr-defined]
        await close()
