"""Expert mixtures on every backend (`backend_server`: transformers+PEFT, then vLLM), through the official
client: a mixture answers with the weighted sum of its adapters' deltas (the stacked-LoRA forward on
transformers, one derived LoRA of rank Σr on vLLM), and both compute the same thing.

Which experts a routed mixture takes, and how the record and headers say so, is bookkeeping no model
output decides: tests/http/test_mixture_records.py.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import httpx
import openai
import pytest

from tests.support.helpers import COOKING_EXAMPLES, copy_demo_adapter, expert_body
from tests.support.server_process import ServerProcess

pytestmark = pytest.mark.e2e
CROSS = "Write the SQL query for the average monthly growth rate of sales, and explain the arithmetic."
PROMPT = "Question: how many customers placed more than 3 orders?\nAnswer:"
# Each backend's prompt log-probabilities under the same mixture, to compare across backends.
PROMPT_SCORES: dict[str, dict[str, list[float]]] = {}


def greedy(client: openai.OpenAI, model: str, text: str, max_tokens: int = 32, **extra: object
           ) -> openai.types.chat.ChatCompletion:
    return client.chat.completions.create(model=model, messages=[{"role": "user", "content": text}],
                                          max_tokens=max_tokens, temperature=0, **extra)


def prompt_logprobs(client: openai.OpenAI, model: str, **extra: object) -> list[float]:
    completion = client.completions.create(model=model, prompt=PROMPT, max_tokens=1, temperature=0, echo=True,
                                           logprobs=0, **extra)
    return [lp for lp in completion.choices[0].logprobs.token_logprobs[1:-1]]  # the prompt's tokens


def test_a_one_zero_mixture_is_the_single_adapter_token_for_token(client: openai.OpenAI) -> None:
    single = greedy(client, "sql", CROSS)
    mixed = greedy(client, "auto", CROSS, extra_body={"experts": {"sql": 1.0, "math": 0.0}})
    record = mixed.model_extra["switchyard"]
    assert record["kind"] == "mixture" and mixed.model == "sql+math"
    assert record["experts"] == [{"name": "sql", "weight": 1.0}, {"name": "math", "weight": 0.0}]
    assert mixed.choices[0].message.content == single.choices[0].message.content


def test_a_mixture_is_the_weighted_sum_and_equal_on_both_backends(client: openai.OpenAI,
                                                                   backend_server: ServerProcess,
                                                                   request: pytest.FixtureRequest) -> None:
    sql, math = prompt_logprobs(client, "sql"), prompt_logprobs(client, "math")
    mixed = prompt_logprobs(client, "sql+math")
    weighted = prompt_logprobs(client, "auto", extra_body={"experts": {"sql": 0.7, "math": 0.3}})

    def gap(a: list[float], b: list[float]) -> float:
        return max(abs(x - y) for x, y in zip(a, b, strict=True))

    assert gap(mixed, sql) > 1e-2 and gap(mixed, math) > 1e-2  # neither component alone
    assert gap(weighted, mixed) > 1e-3  # the weights matter
    backend = request.node.callspec.params["backend_server"]
    PROMPT_SCORES[backend] = {"sql": sql, "mixed": mixed, "weighted": weighted}
    if len(PROMPT_SCORES) == 2:  # the second backend: the derived LoRA (vLLM) against the stacked mixture
        one, other = PROMPT_SCORES.values()
        baseline = gap(one["sql"], other["sql"])  # what the two engines differ by on a single adapter
        for name in ("mixed", "weighted"):
            print(f"largest prompt-logprob gap between the backends, {name}: {gap(one[name], other[name]):.2e} "
                  f"(single adapter: {baseline:.2e})")
            assert gap(one[name], other[name]) <= max(5e-3, 3 * baseline), (name, baseline)


def test_mixture_rows_in_a_mixed_batch_equal_solo_runs(client: openai.OpenAI) -> None:
    requests = [("sql", "List all customers from Paris.", None), ("sql+math", CROSS, None),
                ("base", "Name three colours.", None), ("auto", "My bill doubled. What is 2 times 40?",
                                                         {"experts": {"support": 0.6, "math": 0.4}}),
                ("math", "Ana has 7 pens and buys 5 more. How many pens?", None)]

    def answer(model: str, text: str, body: dict | None) -> str:
        return greedy(client, model, text, 24, extra_body=body).choices[0].message.content or ""

    solo = [answer(*r) for r in requests]
    assert len(set(solo)) == len(solo)
    with ThreadPoolExecutor(max_workers=len(requests)) as pool:
        assert list(pool.map(lambda r: answer(*r), requests)) == solo


def test_removing_a_component_mid_stream(backend_server: ServerProcess, client: openai.OpenAI,
                                         admin: httpx.Client) -> None:
    path = copy_demo_adapter(backend_server.directory / "adapters", "helper")  # type: ignore[attr-defined]
    assert admin.post("/admin/experts", json=expert_body("helper", path, COOKING_EXAMPLES)).status_code == 201
    stream = client.chat.completions.create(
        model="sql+helper", messages=[{"role": "user", "content": "Count from one to fifty in words."}],
        max_tokens=64, temperature=0, stream=True, extra_body={"ignore_eos": True})
    chunks = iter(stream)
    next(chunks)
    assert admin.get("/admin/experts/helper").json()["active_requests"] == 1
    assert admin.delete("/admin/experts/helper").status_code == 204
    rest = list(chunks)
    assert rest[-1].choices[0].finish_reason == "length"  # finished on the versions it leased
    assert sum(len(c.choices[0].delta.content or "") for c in rest if c.choices) > 0
    with pytest.raises(openai.NotFoundError):
        greedy(client, "sql+helper", "Hello", 4)
    assert greedy(client, "sql", "Hello", 4).choices[0].message.content  # the other component still serves
    metrics = admin.get("/metrics").text
    assert 'switchyard_mixture_components_total{expert="helper"}' in metrics


def test_bad_mixtures_are_refused_by_name(client: openai.OpenAI) -> None:
    for model, body, status, code in [
        ("sql+nope", None, 404, "model_not_found"),
        ("sql+sql", None, 400, "invalid_mixture"),
        ("math", {"experts": {"sql": 1.0}}, 400, "invalid_mixture"),
        ("auto", {"experts": {"sql": 0.0, "math": 0.0}}, 400, "invalid_request"),
        ("auto", {"experts": {"a": 1, "b": 1, "c": 1, "d": 1, "e": 1}}, 400, "invalid_request"),
    ]:
        with pytest.raises(openai.APIStatusError) as caught:
            greedy(client, model, "Hello", 4, extra_body=body)
        assert caught.value.status_code == status and caught.value.body["code"] == code, caught.value.body
    # the refusals changed nothing: the mixture still serves
    assert greedy(client, "sql+math", "Hello", 4).choices[0].message.content is not None
