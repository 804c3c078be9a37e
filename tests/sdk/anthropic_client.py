#!/usr/bin/env python3
"""Drives ollama-gateway with the official `anthropic` Python SDK, unmodified.

Run by tests/it/sdk.rs, which starts a fake Ollama and the gateway and passes
GATEWAY_URL (`http://host:port`, to which the SDK appends /v1/messages, as Claude Code
does) and GATEWAY_TOKEN. What the fake answers is described in sdk.rs; the expected
values below mirror it.

Each case is a function with plain asserts. The script prints each case's name and
`ok`, stops at the first failure with a message naming the case, and exits non-zero.
"""

import os
import sys

import anthropic

import cases  # tests/sdk/cases.py, beside this script

URL = os.environ["GATEWAY_URL"]
TOKEN = os.environ["GATEWAY_TOKEN"]

# No retries: an error must surface at once, as its own exception class. `api_key` goes
# out as `x-api-key`, with the SDK's `anthropic-version` header.
client = anthropic.Anthropic(base_url=URL, api_key=TOKEN, max_retries=0, timeout=20)

HI = [{"role": "user", "content": "Hi"}]
WEATHER_TOOL = {
    "name": "get_weather",
    "description": "The weather in a city",
    "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
}
QUESTION = [{"role": "user", "content": "What is the weather in Tokyo?"}]


def messages_create():
    message = client.messages.create(model="llama3.2", max_tokens=64, messages=HI)
    assert message.type == "message" and message.role == "assistant", message
    assert message.id.startswith("msg_"), message.id
    assert message.model == "llama3.2", message.model
    assert [block.type for block in message.content] == ["text"], message.content
    assert message.content[0].text == "Hello", message.content
    assert message.stop_reason == "end_turn", message.stop_reason
    assert (message.usage.input_tokens, message.usage.output_tokens) == (3, 5), message.usage


def messages_create_with_a_bearer_token_and_system_blocks():
    bearer = anthropic.Anthropic(base_url=URL, auth_token=TOKEN, max_retries=0, timeout=20)
    message = bearer.messages.create(
        model="llama3.2",
        max_tokens=64,
        system=[{"type": "text", "text": "Be terse.", "cache_control": {"type": "ephemeral"}}],
        messages=HI,
    )
    assert message.content[0].text == "Hello", message.content


def messages_create_through_a_glob_alias():
    message = client.messages.create(model="claude-sonnet-4-5-20250929", max_tokens=64, messages=HI)
    assert message.model == "claude-sonnet-4-5-20250929", f"the reply names the model asked for: {message.model!r}"
    assert message.content[0].text == "Hello", message.content


def messages_stream_text():
    with client.messages.stream(model="llama3.2", max_tokens=64, messages=HI) as stream:
        text = "".join(stream.text_stream)
        final = stream.get_final_message()
    assert text == "Hello", text
    assert [block.type for block in final.content] == ["text"], final.content
    assert final.content[0].text == "Hello", final.content
    assert final.stop_reason == "end_turn", final.stop_reason
    assert final.usage.output_tokens == 2, final.usage


def messages_stream_thinking_then_text():
    with client.messages.stream(
        model="thinker",
        max_tokens=2048,
        thinking={"type": "enabled", "budget_tokens": 1024},
        messages=HI,
    ) as stream:
        thinking, text = [], []
        for event in stream:
            if event.type == "thinking":
                thinking.append(event.thinking)
            elif event.type == "text":
                text.append(event.text)
        final = stream.get_final_message()
    assert "".join(thinking) == "Hmm, a greeting.", thinking
    assert "".join(text) == "Hello!", text
    assert [block.type for block in final.content] == ["thinking", "text"], final.content
    assert final.content[0].thinking == "Hmm, a greeting.", final.content[0]
    assert final.content[0].signature, "a thinking block is signed"
    assert final.content[1].text == "Hello!", final.content[1]
    assert final.stop_reason == "end_turn", final.stop_reason


def messages_stream_tool_use():
    with client.messages.stream(model="tools", max_tokens=64, tools=[WEATHER_TOOL], messages=QUESTION) as stream:
        final = stream.get_final_message()
    assert final.stop_reason == "tool_use", final.stop_reason
    assert [block.type for block in final.content] == ["tool_use"], final.content
    block = final.content[0]
    assert block.name == "get_weather", block
    assert block.input == {"city": "Tokyo"}, f"the SDK parses the streamed input: {block.input!r}"
    assert block.id.startswith("toolu_"), block.id


def messages_tool_round_trip():
    first = client.messages.create(model="tools", max_tokens=64, tools=[WEATHER_TOOL], messages=QUESTION)
    assert first.stop_reason == "tool_use", first.stop_reason
    call = first.content[-1]
    assert call.type == "tool_use" and call.input == {"city": "Tokyo"}, first.content
    history = QUESTION + [
        {"role": "assistant", "content": first.content},
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": call.id, "content": "sunny, 21 C"}]},
    ]
    second = client.messages.create(model="tools", max_tokens=64, tools=[WEATHER_TOOL], messages=history)
    assert second.stop_reason == "end_turn", second.stop_reason
    assert second.content[0].text == "The weather: sunny, 21 C", second.content


def count_tokens():
    short = client.messages.count_tokens(model="llama3.2", messages=HI).input_tokens
    long = client.messages.count_tokens(
        model="llama3.2", messages=[{"role": "user", "content": "Hi there. " * 100}]
    ).input_tokens
    with_tools = client.messages.count_tokens(model="llama3.2", messages=HI, tools=[WEATHER_TOOL]).input_tokens
    assert 0 < short < long, (short, long)
    assert with_tools > short, (short, with_tools)


def error_authentication():
    for wrong in (
        anthropic.Anthropic(base_url=URL, api_key="sk-not-the-token-0000000000", max_retries=0, timeout=20),
        anthropic.Anthropic(base_url=URL, auth_token="sk-not-the-token-0000000000", max_retries=0, timeout=20),
    ):
        try:
            wrong.messages.create(model="llama3.2", max_tokens=64, messages=HI)
        except anthropic.AuthenticationError as error:
            assert error.status_code == 401, error.status_code
            assert error.body["error"]["type"] == "authentication_error", error.body
            continue
        raise AssertionError("a wrong token did not raise AuthenticationError")


def error_permission_denied():
    try:
        client.messages.create(model="gpt-oss:20b", max_tokens=64, messages=HI)
    except anthropic.PermissionDeniedError as error:
        assert error.status_code == 403, error.status_code
        assert error.body["error"]["type"] == "permission_error", error.body
        return
    raise AssertionError("a model outside the token's allowlist did not raise PermissionDeniedError")


def error_not_found():
    try:
        client.messages.create(model="nope", max_tokens=64, messages=HI)
    except anthropic.NotFoundError as error:
        assert error.status_code == 404, error.status_code
        assert error.body["error"]["type"] == "not_found_error", error.body
        assert "nope" in error.message, error.message
        return
    raise AssertionError("an upstream 404 did not raise NotFoundError")


def error_bad_request():
    try:
        client.messages.create(model="llama3.2", max_tokens=64, messages=[])
    except anthropic.BadRequestError as error:
        assert error.status_code == 400, error.status_code
        assert error.body["error"]["type"] == "invalid_request_error", error.body
        return
    raise AssertionError("an empty messages list did not raise BadRequestError")


def error_rate_limited():
    # Last: the 429 spends the fake's only key.
    try:
        client.messages.create(model="busy", max_tokens=64, messages=HI)
    except anthropic.RateLimitError as error:
        assert error.status_code == 429, error.status_code
        assert error.body["error"]["type"] == "rate_limit_error", error.body
        assert error.response.headers.get("retry-after"), "a Retry-After header"
        return
    raise AssertionError("an upstream 429 did not raise RateLimitError")


CASES = [
    messages_create,
    messages_create_with_a_bearer_token_and_system_blocks,
    messages_create_through_a_glob_alias,
    messages_stream_text,
    messages_stream_thinking_then_text,
    messages_stream_tool_use,
    messages_tool_round_trip,
    count_tokens,
    error_authentication,
    error_permission_denied,
    error_not_found,
    error_bad_request,
    error_rate_limited,
]


def main():
    return cases.run(f"anthropic {anthropic.__version__} against {URL}", CASES)


if __name__ == "__main__":
    sys.exit(main())
