"""The decision record, in process: the backend's placement report (engine, adapter tier) reaches the body,
the headers and the last streamed chunk of every text endpoint, and nothing about it depends on a model."""

from __future__ import annotations

import openai

from tests.support.inprocess import InProcessServer

SQL = "Write a SQL query that counts the orders of each customer."


def test_the_backends_placement_is_in_the_record_of_every_endpoint(client: openai.OpenAI,
                                                                   app_server: InProcessServer) -> None:
    raw = client.chat.completions.with_raw_response.create(model="auto", max_tokens=3,
                                                           messages=[{"role": "user", "content": SQL}])
    record = raw.parse().model_extra["switchyard"]
    assert (record["expert"], record["engine"], record["adapter_tier"]) == ("sql", "fake", "device")
    assert raw.headers["x-switchyard-adapter-tier"] == "device"
    generalist = client.chat.completions.create(model="base", max_tokens=2, messages=[{"role": "user", "content": SQL}])
    assert generalist.model_extra["switchyard"]["engine"] == "fake"
    assert generalist.model_extra["switchyard"]["adapter_tier"] is None  # no adapter was needed
    streamed = list(client.completions.create(model="sql", prompt=SQL, max_tokens=3, stream=True))
    assert streamed[-1].model_extra["switchyard"]["engine"] == "fake"
    response = client.responses.create(model="math", input="What is 2 + 2?", max_output_tokens=16)
    assert response.model_extra["switchyard"]["adapter_tier"] == "device"
    assert app_server.backend.requests[-1].adapter_key is not None  # the adapter served it, as recorded
