"""What routing reads from a request: the conversation's turns, and the session key if any.

One home for the rule, so chat, `/v1/route`, `/v1/retrieve`, feedback and the Ray ingress read a
conversation the same way: user and assistant messages with text, oldest first, up to the last user
message (the turn being answered). System, developer and tool messages do not enter routing.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from routers.conversation import ASSISTANT_CHARS, Turn, routing_text
from server.failures import InvalidRequest
from server.protocol import ChatMessage, ConversationQuery
from server.routing.affinity import MAX_SESSION_KEY

SESSION_HEADER = "x-switchyard-session"


def conversation_turns(messages: Sequence[ChatMessage]) -> list[Turn]:
    """User and assistant turns with text, oldest first, up to the last user message (the turn being
    answered); a user turn is cut to what routing reads (`routing_text`), an assistant turn to its opening
    `ASSISTANT_CHARS`. A 400 when there is no user
    message with text."""
    if not messages:
        raise InvalidRequest("messages must not be empty", "empty_messages", "messages")
    turns = [Turn(routing_text(m.text()) if m.role == "user" else m.text()[:ASSISTANT_CHARS], m.role == "assistant")
             for m in messages if m.role in ("user", "assistant") and m.text().strip()]
    last_user = max((i for i, turn in enumerate(turns) if not turn.assistant), default=None)
    if last_user is None:
        raise InvalidRequest("messages must contain a user message with text", "no_user_message", "messages")
    return turns[:last_user + 1]


def turns_of(body: ConversationQuery) -> list[Turn]:
    """A `query` is a conversation of one user turn; `messages` give their turns."""
    return [Turn(body.query)] if body.query is not None else conversation_turns(body.messages or [])


def session_key(headers: Mapping[str, str], user: str | None, namespace: str) -> str | None:
    """The session a request belongs to: the x-switchyard-session header, else OpenAI's `user` field, within
    the caller's `namespace` (`server.api.deps.caller_namespace`). The same name under two API keys is two
    sessions: `user` is an identifier a client chooses, not a secret, so it never reaches another caller's."""
    key = headers.get(SESSION_HEADER) or user
    if key is not None and len(key) > MAX_SESSION_KEY:
        raise InvalidRequest(f"the session key is longer than {MAX_SESSION_KEY} characters",
                             "session_key_too_long", SESSION_HEADER)
    return f"{namespace}/{key}" if key else None
