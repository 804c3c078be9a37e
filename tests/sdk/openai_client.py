#!/usr/bin/env python3
"""Drives ollama-gateway with the official `openai` Python SDK, unmodified.

Run by tests/it/sdk.rs, which starts a fake Ollama and the gateway and passes
GATEWAY_URL (`http://host:port/v1`) and GATEWAY_TOKEN. What the fake answers is
described in sdk.rs; the expected values below mirror it.

Each case is a function with plain asserts. The script prints each case's name and
`ok`, stops at the first failure with a message naming the case, and exits non-zero.
"""

import base64
import json
import os
import struct
import sys

import openai

import cases  # tests/sdk/cases.py, beside this script

URL = os.environ["GATEWAY_URL"]
TOKEN = os.environ["GATEWAY_TOKEN"]

# No retries: an error must surface at once, as its own exception class.
client = openai.OpenAI(base_url=URL, api_key=TOKEN, max_retries=0, timeout=20)

HI = [{"role": "user", "content": "Hi"}]
# The fake embeds the i-th input as [0.1, -0.2, 0.3] shifted by i, counting 4 tokens each.
VECTORS = [[0.1, -0.2, 0.3], [1.1, 0.8, 1.3]]
WEATHER_TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "The weather in a city",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
    },
}


def as_f32(values):
    """`values` rounded to float32, as the gateway packs base64 embeddings."""
    return list(struct.unpack(f"<{len(values)}f", struct.pack(f"<{len(values)}f", *values)))


def chat_non_stream():
    reply = client.chat.completions.create(model="llama3.2", messages=HI)
    assert reply.object == "chat.completion", reply
    assert reply.id.startswith("chatcmpl-"), reply.id
    assert reply.model == "llama3.2", reply.model
    choice = reply.choices[0]
    assert choice.message.role == "assistant", choice
    assert choice.message.content == "Hello", choice.message.content
    assert choice.finish_reason == "stop", choice.finish_reason
    usage = (reply.usage.prompt_tokens, reply.usage.completion_tokens, reply.usage.total_tokens)
    assert usage == (3, 5, 8), usage


def chat_through_an_alias():
    reply = client.chat.completions.create(model="gpt-4o-mini", messages=HI)
    assert reply.model == "gpt-4o-mini", f"the reply names the alias asked for, got {reply.model!r}"
    assert reply.choices[0].message.content == "Hello", reply


def chat_stream_with_usage():
    stream = client.chat.completions.create(
        model="llama3.2", messages=HI, stream=True, stream_options={"include_usage": True}
    )
    chunks = list(stream)
    assert chunks, "no chunks"
    assert len({c.id for c in chunks}) == 1, [c.id for c in chunks]
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == "Hello", text
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert finishes == ["stop"], finishes
    last = chunks[-1]
    assert last.choices == [], f"the usage chunk has no choices: {last}"
    usage = (last.usage.prompt_tokens, last.usage.completion_tokens, last.usage.total_tokens)
    assert usage == (3, 2, 5), usage
    assert all(c.usage is None for c in chunks[:-1]), "only the last chunk has usage"


def chat_stream_without_usage():
    chunks = list(client.chat.completions.create(model="llama3.2", messages=HI, stream=True))
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == "Hello"
    assert all(c.usage is None for c in chunks), [c.usage for c in chunks]


def tools_non_stream():
    reply = client.chat.completions.create(model="tools", messages=HI, tools=[WEATHER_TOOL])
    choice = reply.choices[0]
    assert choice.finish_reason == "tool_calls", choice.finish_reason
    calls = choice.message.tool_calls
    assert calls and len(calls) == 1, calls
    assert calls[0].type == "function", calls[0]
    assert calls[0].id, "a tool call has an id"
    assert calls[0].function.name == "get_weather", calls[0].function
    assert json.loads(calls[0].function.arguments) == {"city": "Tokyo"}, calls[0].function.arguments


def tools_stream():
    stream = client.chat.completions.create(model="tools", messages=HI, tools=[WEATHER_TOOL], stream=True)
    calls = {}
    finishes = []
    for chunk in stream:
        if not chunk.choices:
            continue
        choice = chunk.choices[0]
        if choice.finish_reason:
            finishes.append(choice.finish_reason)
        for delta in choice.delta.tool_calls or []:
            call = calls.setdefault(delta.index, {"name": "", "arguments": ""})
            if delta.function and delta.function.name:
                call["name"] += delta.function.name
            if delta.function and delta.function.arguments:
                call["arguments"] += delta.function.arguments
    assert finishes == ["tool_calls"], finishes
    assert list(calls) == [0], calls
    assert calls[0]["name"] == "get_weather", calls
    assert json.loads(calls[0]["arguments"]) == {"city": "Tokyo"}, calls


def legacy_completions():
    reply = client.completions.create(model="llama3.2", prompt="Once upon")
    assert reply.object == "text_completion", reply
    assert reply.choices[0].text == "Hi there", reply.choices[0]
    assert reply.choices[0].finish_reason == "stop", reply.choices[0]
    assert reply.usage.total_tokens == 7, reply.usage
    stream = client.completions.create(model="llama3.2", prompt="Once upon", stream=True)
    assert "".join(c.choices[0].text for c in stream if c.choices) == "Hi there"


def embeddings_float():
    reply = client.embeddings.create(model="all-minilm", input=["a", "b"], encoding_format="float")
    assert reply.model == "all-minilm", reply.model
    assert [d.index for d in reply.data] == [0, 1], reply.data
    assert [d.embedding for d in reply.data] == VECTORS, [d.embedding for d in reply.data]
    assert (reply.usage.prompt_tokens, reply.usage.total_tokens) == (8, 8), reply.usage


def embeddings_base64():
    reply = client.embeddings.create(model="all-minilm", input=["a", "b"], encoding_format="base64")
    for item, vector in zip(reply.data, VECTORS):
        # Asked for explicitly, base64 comes back as the raw string.
        assert isinstance(item.embedding, str), f"expected a base64 string, got {item.embedding!r}"
        raw = base64.b64decode(item.embedding)
        assert len(raw) == 4 * len(vector), raw
        got = list(struct.unpack(f"<{len(vector)}f", raw))
        assert got == as_f32(vector), (got, vector)
    assert reply.data[0].embedding == "zczMPc3MTL6amZk+", reply.data[0].embedding


def embeddings_default_format():
    # Without encoding_format the SDK asks for base64 itself and decodes it to floats.
    reply = client.embeddings.create(model="all-minilm", input="a")
    vector = reply.data[0].embedding
    assert isinstance(vector, list) and len(vector) == 3, vector
    assert all(isinstance(v, float) for v in vector), vector
    assert all(abs(g - w) < 1e-6 for g, w in zip(vector, VECTORS[0])), vector
    assert reply.usage.prompt_tokens == 4, reply.usage


def models_list():
    ids = sorted(m.id for m in client.models.list())
    # The fake's models the token may see, and the alias.
    want = sorted(["llama3.2:latest", "all-minilm:latest", "hf.co/org/model:Q4_K_M", "gpt-4o-mini"])
    assert ids == want, ids


def models_retrieve_with_slash_and_colon():
    model = client.models.retrieve("hf.co/org/model:Q4_K_M")
    assert model.id == "hf.co/org/model:Q4_K_M", model.id
    assert model.object == "model", model
    assert model.owned_by == "org", model.owned_by
    assert model.created == 1700000000, model.created


RESPONSES_WEATHER_TOOL = {
    "type": "function",
    "name": "get_weather",
    "description": "The weather in a city",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
}


def responses_create():
    reply = client.responses.create(model="llama3.2", input="Hi")
    assert reply.object == "response", reply
    assert reply.id.startswith("resp_"), reply.id
    assert (reply.model, reply.status) == ("llama3.2", "completed"), reply
    assert reply.output_text == "Hello", reply.output_text
    assert [item.type for item in reply.output] == ["message"], reply.output
    usage = (reply.usage.input_tokens, reply.usage.output_tokens, reply.usage.total_tokens)
    assert usage == (3, 5, 8), usage


def responses_create_with_instructions_through_an_alias():
    reply = client.responses.create(
        model="gpt-4o-mini", instructions="Be terse.", input=[{"role": "user", "content": "Hi"}]
    )
    assert reply.model == "gpt-4o-mini", f"the reply names the alias asked for, got {reply.model!r}"
    assert reply.instructions == "Be terse.", reply.instructions
    assert reply.output_text == "Hello", reply.output_text


def responses_stream():
    with client.responses.stream(model="llama3.2", input="Hi") as stream:
        kinds, deltas = [], []
        for event in stream:
            kinds.append(event.type)
            if event.type == "response.output_text.delta":
                deltas.append(event.delta)
        final = stream.get_final_response()
    assert deltas == ["Hel", "lo"], deltas
    assert kinds[:2] == ["response.created", "response.in_progress"], kinds
    assert kinds[-1] == "response.completed", kinds
    assert final.status == "completed", final
    assert final.output_text == "Hello", final.output_text
    assert final.usage.total_tokens == 5, final.usage


def responses_function_call_round_trip():
    question = [{"role": "user", "content": "What is the weather in Tokyo?"}]
    first = client.responses.create(model="tools", input=question, tools=[RESPONSES_WEATHER_TOOL])
    calls = [item for item in first.output if item.type == "function_call"]
    assert len(calls) == 1, first.output
    call = calls[0]
    assert call.name == "get_weather", call
    assert json.loads(call.arguments) == {"city": "Tokyo"}, call.arguments
    assert call.call_id, "a function call has a call_id"
    # The whole history again, as a stateless client sends it: the SDK's own output items,
    # then the function's result.
    result = {"type": "function_call_output", "call_id": call.call_id, "output": "sunny, 21 C"}
    history = question + first.output + [result]
    second = client.responses.create(model="tools", input=history, tools=[RESPONSES_WEATHER_TOOL])
    assert second.output_text == "The weather: sunny, 21 C", second.output


def responses_stream_function_call():
    with client.responses.stream(
        model="tools", input="What is the weather in Tokyo?", tools=[RESPONSES_WEATHER_TOOL]
    ) as stream:
        done = [event.item for event in stream if event.type == "response.output_item.done"]
        final = stream.get_final_response()
    assert [item.type for item in done] == ["function_call"], done
    calls = [item for item in final.output if item.type == "function_call"]
    assert len(calls) == 1 and calls[0].name == "get_weather", final.output
    assert json.loads(calls[0].arguments) == {"city": "Tokyo"}, calls[0].arguments
    assert calls[0].call_id == done[0].call_id, (calls[0], done[0])


def responses_error_previous_response_id():
    try:
        client.responses.create(model="llama3.2", input="Hi", previous_response_id="resp_earlier")
    except openai.BadRequestError as error:
        assert error.status_code == 400, error.status_code
        assert error.param == "previous_response_id", error.body
        return
    raise AssertionError("previous_response_id did not raise BadRequestError")


def error_model_not_allowed():
    try:
        client.chat.completions.create(model="gpt-oss:20b", messages=HI)
    except openai.PermissionDeniedError as error:
        assert error.status_code == 403, error.status_code
        assert error.type == "permission_error", error.body
        return
    raise AssertionError("a model outside the token's allowlist did not raise PermissionDeniedError")


def error_wrong_token():
    wrong = openai.OpenAI(base_url=URL, api_key="sk-not-the-token-0000000000", max_retries=0, timeout=20)
    try:
        wrong.models.list()
    except openai.AuthenticationError as error:
        assert error.status_code == 401, error.status_code
        assert error.code == "invalid_api_key", error.body
        return
    raise AssertionError("a wrong token did not raise AuthenticationError")


def error_model_not_found():
    for call in (
        lambda: client.chat.completions.create(model="nope", messages=HI),
        lambda: client.models.retrieve("nope"),
    ):
        try:
            call()
        except openai.NotFoundError as error:
            assert error.status_code == 404, error.status_code
            assert error.code == "model_not_found", error.body
            assert "nope" in error.message, error.message
            continue
        raise AssertionError("an upstream 404 did not raise NotFoundError")


def error_rate_limited():
    try:
        client.chat.completions.create(model="busy", messages=HI)
    except openai.RateLimitError as error:
        assert error.status_code == 429, error.status_code
        assert error.code == "rate_limit_exceeded", error.body
        return
    raise AssertionError("an upstream 429 did not raise RateLimitError")


CASES = [
    chat_non_stream,
    chat_through_an_alias,
    chat_stream_with_usage,
    chat_stream_without_usage,
    tools_non_stream,
    tools_stream,
    legacy_completions,
    embeddings_float,
    embeddings_base64,
    embeddings_default_format,
    models_list,
    models_retrieve_with_slash_and_colon,
    responses_create,
    responses_create_with_instructions_through_an_alias,
    responses_stream,
    responses_function_call_round_trip,
    responses_stream_function_call,
    responses_error_previous_response_id,
    error_model_not_allowed,
    error_wrong_token,
    error_model_not_found,
    error_rate_limited,
]


def main():
    return cases.run(f"openai {openai.__version__} against {URL}", CASES)


if __name__ == "__main__":
    sys.exit(main())
