"""vLLM's chat extensions for scoring and prefilling answers, on every backend, through the official client:
`prompt_logprobs`, `add_generation_prompt`, `continue_final_message` and `echo` (sent in `extra_body`).

They are how `bench/answer_quality.py` measures an expert's answers: the real reply is the conversation's
trailing assistant message, left open, and its tokens' prompt log-probabilities are its likelihood.
"""

from __future__ import annotations

import math

import openai
import pytest

pytestmark = pytest.mark.e2e
QUESTION = [{"role": "user", "content": "A box holds 6 eggs. How many eggs are in 4 boxes?"}]
CONTINUE = {"add_generation_prompt": False, "continue_final_message": True}


def rendered(tokenizer: object, messages: list[dict[str, str]], **options: bool) -> list[int]:
    return list(tokenizer.apply_chat_template(messages, tokenize=True, return_dict=True, **options)["input_ids"])


def test_prompt_logprobs_score_every_prompt_token(client: openai.OpenAI, tokenizer: object) -> None:
    """One entry per prompt token as the server rendered it (the first has none), each holding the token there
    with its rank, and the two best alternatives ranked 1 and 2."""
    reply = [*QUESTION, {"role": "assistant", "content": "There are 24 eggs."}]
    completion = client.chat.completions.create(model="math", messages=reply, max_tokens=1, temperature=0,
                                                extra_body={**CONTINUE, "prompt_logprobs": 2})
    ids = rendered(tokenizer, reply, continue_final_message=True)
    scores = completion.model_extra["prompt_logprobs"]
    assert completion.usage.prompt_tokens == len(ids) == len(scores)
    assert scores[0] is None
    for token, entry in zip(ids[1:], scores[1:], strict=True):
        chosen = entry[str(token)]
        assert chosen["logprob"] <= 0 and chosen["rank"] >= 1
        best = sorted((e for e in entry.values() if e["rank"] <= 2), key=lambda e: e["rank"])
        assert [e["rank"] for e in best] == [1, 2] and best[0]["logprob"] >= best[1]["logprob"]
        assert (chosen["rank"] == 1) == math.isclose(chosen["logprob"], best[0]["logprob"], abs_tol=1e-4)


def test_a_reply_scores_as_the_greedy_answer_that_produced_it(client: openai.OpenAI, tokenizer: object) -> None:
    """Scoring the model's own greedy answer: each answer token is the most likely one (rank 1), with the
    log-probability generation reported for it."""
    answer = client.chat.completions.create(model="math", messages=QUESTION, max_tokens=8, temperature=0,
                                            logprobs=True)
    text = answer.choices[0].message.content
    generated = [e.logprob for e in answer.choices[0].logprobs.content][:4]
    scored = client.chat.completions.create(
        model="math", messages=[*QUESTION, {"role": "assistant", "content": text}], max_tokens=1, temperature=0,
        extra_body={**CONTINUE, "prompt_logprobs": 0})
    opened = len(rendered(tokenizer, QUESTION, add_generation_prompt=True))
    ids = rendered(tokenizer, [*QUESTION, {"role": "assistant", "content": text}], continue_final_message=True)
    entries = scored.model_extra["prompt_logprobs"][opened:opened + len(generated)]
    assert [entry[str(token)]["rank"] for token, entry in zip(ids[opened:], entries, strict=False)] == \
        [1] * len(generated)
    assert [entry[str(token)]["logprob"] for token, entry in zip(ids[opened:], entries, strict=False)] == \
        pytest.approx(generated, abs=0.05)


def test_continue_final_message_continues_the_answer_and_echo_repeats_it(client: openai.OpenAI) -> None:
    """A prefilled answer is continued where it stops, as greedy decoding would have gone on; with `echo` the
    answer holds the prefill too, whole and streamed."""
    whole = client.chat.completions.create(model="math", messages=QUESTION, max_tokens=12, temperature=0,
                                           logprobs=True)
    tokens = [e.token for e in whole.choices[0].logprobs.content]
    prefill = "".join(tokens[:4])
    messages = [*QUESTION, {"role": "assistant", "content": prefill}]
    continued = client.chat.completions.create(model="math", messages=messages, max_tokens=4, temperature=0,
                                               extra_body=CONTINUE)
    assert whole.choices[0].message.content.startswith(prefill + continued.choices[0].message.content)
    echoed = client.chat.completions.create(model="math", messages=messages, max_tokens=4, temperature=0,
                                            extra_body={**CONTINUE, "echo": True})
    assert echoed.choices[0].message.content == prefill + continued.choices[0].message.content
    stream = client.chat.completions.create(model="math", messages=messages, max_tokens=4, temperature=0,
                                            stream=True, extra_body={**CONTINUE, "echo": True})
    assert "".join(c.choices[0].delta.content or "" for c in stream if c.choices) == \
        echoed.choices[0].message.content


def test_add_generation_prompt_decides_how_the_conversation_is_rendered(client: openai.OpenAI,
                                                                        tokenizer: object) -> None:
    for opened in (True, False):
        completion = client.chat.completions.create(model="auto", messages=QUESTION, max_tokens=2, temperature=0,
                                                    extra_body={"add_generation_prompt": opened})
        assert completion.usage.prompt_tokens == len(rendered(tokenizer, QUESTION, add_generation_prompt=opened))


@pytest.mark.parametrize(("extra", "named"), [
    ({"prompt_logprobs": 21}, "prompt_logprobs"),
    ({"prompt_logprobs": -1}, "prompt_logprobs"),
    ({"prompt_logprobs": 1, "stream": True}, "prompt_logprobs"),
    ({"add_generation_prompt": False, "continue_final_message": True}, "continue_final_message"),
    ({"continue_final_message": True}, "continue_final_message"),
])
def test_scoring_parameters_that_cannot_be_honoured_are_refused_by_name(client: openai.OpenAI, extra: dict,
                                                                        named: str) -> None:
    """Above the bound, streamed prompt scores, continuing a conversation that ends with the user, and both
    ways of ending the prompt at once: 400 in OpenAI's error shape, naming the parameter."""
    with pytest.raises(openai.BadRequestError) as caught:
        client.chat.completions.create(model="auto", messages=QUESTION, max_tokens=2, extra_body=extra)
    assert caught.value.body["param"] == named, caught.value.body
