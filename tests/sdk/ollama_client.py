#!/usr/bin/env python3
"""Drives ollama-gateway's native API with the official `ollama` Python library, unmodified.

Run by tests/it/sdk.rs, which starts a fake Ollama and the gateway and passes
GATEWAY_URL (`http://host:port`, the address an Ollama client is given) and GATEWAY_TOKEN.
The fake is tests/it/fake.rs's `ollama`; the expected values below mirror it.

Each case is a function with plain asserts. The script prints each case's name and
`ok`, stops at the first failure with a message naming the case, and exits non-zero.
"""

import os
import sys
from importlib import metadata

import ollama
from ollama import Client

import cases  # tests/sdk/cases.py, beside this script

URL = os.environ["GATEWAY_URL"]
TOKEN = os.environ["GATEWAY_TOKEN"]

client = Client(host=URL, headers={"Authorization": f"Bearer {TOKEN}"}, timeout=20)

HI = [{"role": "user", "content": "Hi"}]
# The fake embeds the i-th input as [0.1, -0.2, 0.3] shifted by i.
VECTORS = [[0.1, -0.2, 0.3], [1.1, 0.8, 1.3]]
# What the fake's /api/tags lists, in order.
MODELS = ["llama3.2:latest", "gpt-oss:20b", "qwen3:8b", "all-minilm:latest", "hf.co/org/model:Q4_K_M"]


def chat_non_stream():
    reply = client.chat(model="llama3.2", messages=HI)
    assert reply.message.role == "assistant", reply
    assert reply.message.content == "Hello", reply.message.content
    assert reply.model == "llama3.2", reply.model
    assert reply.done is True and reply.done_reason == "stop", reply
    assert (reply.prompt_eval_count, reply.eval_count) == (3, 5), reply


def chat_stream():
    chunks = list(client.chat(model="llama3.2", messages=HI, stream=True))
    assert len(chunks) == 3, f"expected 3 chunks, got {chunks}"
    text = "".join(chunk.message.content for chunk in chunks)
    assert text == "Hello", text
    assert [chunk.done for chunk in chunks] == [False, False, True], chunks
    last = chunks[-1]
    assert last.done_reason == "stop", last
    assert (last.prompt_eval_count, last.eval_count) == (3, 2), last


def embed():
    reply = client.embed(model="all-minilm", input=["a", "b"])
    assert len(reply.embeddings) == 2, reply.embeddings
    assert [list(e) for e in reply.embeddings] == VECTORS, reply.embeddings
    assert reply.prompt_eval_count == 8, reply.prompt_eval_count


def list_models():
    names = [m.model for m in client.list().models]
    assert names == MODELS, names


def show():
    reply = client.show("llama3.2")
    assert reply.capabilities == ["completion"], reply.capabilities
    assert reply.details.family == "llama", reply.details
    assert reply.modelinfo["general.architecture"] == "llama", reply.modelinfo


def error_wrong_token():
    wrong = Client(host=URL, headers={"Authorization": "Bearer sk-not-the-token-0000000000"}, timeout=20)
    try:
        wrong.list()
    except ollama.ResponseError as error:
        assert error.status_code == 401, error.status_code
        # Ollama's error shape, {"error": "<text>"}, comes out as the text.
        assert isinstance(error.error, str) and "token" in error.error, error.error
        return
    raise AssertionError("a wrong token did not raise ResponseError")


def error_model_not_found():
    for call in (
        lambda: client.chat(model="nope", messages=HI),
        lambda: list(client.chat(model="nope", messages=HI, stream=True)),
    ):
        try:
            call()
        except ollama.ResponseError as error:
            assert error.status_code == 404, error.status_code
            assert error.error == "model 'nope' not found", error.error
            continue
        raise AssertionError("an unknown model did not raise ResponseError")


CASES = [
    chat_non_stream,
    chat_stream,
    embed,
    list_models,
    show,
    error_wrong_token,
    error_model_not_found,
]


def main():
    version = metadata.version("ollama")
    return cases.run(f"ollama {version} against {URL}", CASES)


if __name__ == "__main__":
    sys.exit(main())
