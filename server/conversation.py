"""What routing reads from a request: the conversation's user turns, and the session key if any.

One home for the rule, so chat, `/v1/route`, `/v1/retrieve`, feedback and the Ray ingress read a
conversation the same way: user messages with text, oldest first; the last message must be the user's
(the turn being answered). System, assistant and tool messages do not enter routing.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from routers.base import ContextSummary
from server.errors import APIError
from server.protocol import ChatMessage, ConversationQuery

SESSION_HEADER = "x-switchyard-session"


def user_turns_of(messages: Sequence[ChatMessage]) -> list[str]:
    """The user turns with text, oldest first; a 400 when there is none."""
    if not messages:
        raise APIError(400, "messages must not be empty", "invalid_request_error", "empty_messages", "messages")
    turns = [m.text() for m in messages if m.role == "user" and m.text().strip()]
    if not turns:
        raise APIError(400, "messages must contain a user message with text", "invalid_request_error",
                       "no_user_message", "messages")
    return turns


def turns_of(body: ConversationQuery) -> list[str]:
    """A `query` is a conversation of one turn; `messages` give their user turns."""
    return [body.query] if body.query is not None else user_turns_of(body.messages or [])


def session_key(headers: Mapping[str, str], user: str | None) -> str | None:
    """The session a request belongs to: the x-switchyard-session header, else OpenAI's `user` field."""
    key = headers.get(SESSION_HEADER) or user
    if key is not None and len(key) > 256:
        raise APIError(400, "the session key is longer than 256 characters", "invalid_request_error",
                       "session_key_too_long", SESSION_HEADER)
    return key or None


def context_fields(context: ContextSummary | None) -> dict[str, Any]:
    """The decision record's conversation fields (`RoutingInfo`), from a decision's context summary."""
    if context is None:
        return {}
    return {"turns": context.turns, "previous_expert": context.previous_expert, "context": context.outcome,
            "context_reason": context.reason, "session": context.from_session}
