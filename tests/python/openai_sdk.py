"""Drives a running Hale with the official OpenAI Python SDK, as a user's program would.

Usage: openai_sdk.py BASE_URL API_KEY MODEL

It runs a chat completion, a streamed chat completion, models.list() and a request for a
model nothing serves, and prints one JSON object with what the SDK returned, for the Rust
end-to-end suite (tests/tests/proxy.rs) to assert on. Any exception the SDK raises where it
should not ends the script with a traceback and a non-zero status, which fails that test.
"""

import json
import sys

import openai
from openai import OpenAI


def main() -> None:
    base_url, api_key, model = sys.argv[1], sys.argv[2], sys.argv[3]
    client = OpenAI(base_url=f"{base_url}/v1", api_key=api_key, max_retries=0, timeout=30)
    messages = [{"role": "user", "content": "Say hello through Hale."}]
    out = {"sdk_version": openai.__version__}

    raw = client.chat.completions.with_raw_response.create(model=model, messages=messages)
    completion = raw.parse()
    out["chat"] = {
        "id": completion.id,
        "model": completion.model,
        "content": completion.choices[0].message.content,
        "finish_reason": completion.choices[0].finish_reason,
        "x_hale_endpoint": raw.headers.get("x-hale-endpoint"),
        "x_request_id": raw.headers.get("x-request-id"),
    }

    pieces = []
    finish = None
    chunks = 0
    stream = client.chat.completions.create(model=model, messages=messages, stream=True)
    for chunk in stream:
        chunks += 1
        if chunk.choices:
            delta = chunk.choices[0].delta
            if delta.content:
                pieces.append(delta.content)
            finish = chunk.choices[0].finish_reason or finish
    out["stream"] = {"chunks": chunks, "content": "".join(pieces), "finish_reason": finish}

    out["models"] = sorted(m.id for m in client.models.list().data)

    try:
        client.chat.completions.create(model="no-such-model", messages=messages)
        out["not_found"] = None
    except openai.NotFoundError as e:
        out["not_found"] = {"status": e.status_code, "body": e.body}

    print(json.dumps(out))


if __name__ == "__main__":
    main()
