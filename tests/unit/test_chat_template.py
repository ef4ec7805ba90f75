"""How a conversation is rendered: the chat template's options, and a template's refusal as the request's
error (a 400), never the server's."""

from __future__ import annotations

import pytest
from jinja2 import TemplateError

from experts.backends.base import ChatTemplateOptions
from experts.errors import TemplateRejected

MESSAGES = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello, how"}]


class RecordingTokenizer:
    def __init__(self, error: Exception | None = None) -> None:
        self.error = error
        self.options: dict = {}

    def apply_chat_template(self, messages: list, **options: object) -> dict:
        if self.error is not None:
            raise self.error
        self.options = options
        return {"input_ids": [1, 2, 3]}


def test_the_options_reach_the_template() -> None:
    tokenizer = RecordingTokenizer()
    assert ChatTemplateOptions(False, True).render(tokenizer, MESSAGES) == [1, 2, 3]
    assert (tokenizer.options["add_generation_prompt"], tokenizer.options["continue_final_message"]) == (False, True)
    ChatTemplateOptions().render(tokenizer, MESSAGES)
    assert (tokenizer.options["add_generation_prompt"], tokenizer.options["continue_final_message"]) == (True, False)


@pytest.mark.parametrize("error", [TemplateError("Conversation roles must alternate"),
                                   ValueError("the final message does not appear in the chat")])
def test_a_template_that_refuses_the_conversation_is_a_request_error(error: Exception) -> None:
    with pytest.raises(TemplateRejected, match="refused the messages"):
        ChatTemplateOptions().render(RecordingTokenizer(error), MESSAGES)
