"""Drives a running Hale with the real client libraries of the APIs it speaks, as users' programs would.

Usage:
  client_apis.py openai BASE_URL API_KEY MODEL [SECOND_BASE_URL]
  client_apis.py anthropic BASE_URL API_KEY MODEL
  client_apis.py ollama BASE_URL API_KEY MODEL

Each mode prints one JSON object with what the library returned, for the Rust end-to-end
suite (tests/tests/client_apis.rs) to assert on. An exception where none is expected ends the
script with a traceback and a non-zero status, which fails that test.
"""

import json
import sys
import time


def openai_mode(base_url, api_key, model, second=None):
    import openai
    from openai import OpenAI

    client = OpenAI(base_url=f"{base_url}/v1", api_key=api_key, max_retries=0, timeout=30)
    out = {"sdk_version": openai.__version__, "created": []}

    # Plain, several times: with two endpoints serving the model, both make some.
    for _ in range(6):
        raw = client.responses.with_raw_response.create(model=model, input="Say hello through Hale.")
        response = raw.parse()
        out["created"].append(
            {"id": response.id, "text": response.output_text, "endpoint": raw.headers.get("x-hale-endpoint")}
        )

    # Each retrieve must reach the endpoint that made the response (only it has it).
    out["retrieved"] = []
    for made in out["created"]:
        raw = client.responses.with_raw_response.retrieve(made["id"])
        got = raw.parse()
        out["retrieved"].append({"id": got.id, "text": got.output_text, "endpoint": raw.headers.get("x-hale-endpoint")})

    # Streamed: the arrival time of every event, as the SDK hands it over.
    started = time.monotonic()
    events = []
    stream_id = None
    deltas = []
    with client.responses.stream(model=model, input="Stream through Hale.") as stream:
        for event in stream:
            events.append({"type": event.type, "at": time.monotonic() - started})
            if event.type == "response.created":
                stream_id = event.response.id
            if event.type == "response.output_text.delta":
                deltas.append(event.delta)
    out["stream"] = {"events": events, "id": stream_id, "text": "".join(deltas)}
    raw = client.responses.with_raw_response.retrieve(stream_id)
    out["stream"]["retrieved_endpoint"] = raw.headers.get("x-hale-endpoint")
    out["stream"]["retrieved_id"] = raw.parse().id

    cancelled = client.responses.cancel(out["created"][0]["id"])
    out["cancelled_status"] = cancelled.status
    client.responses.delete(out["created"][1]["id"])
    try:
        client.responses.retrieve(out["created"][1]["id"])
        out["after_delete"] = "found"
    except openai.NotFoundError as e:
        out["after_delete"] = e.status_code

    m = client.models.retrieve(model)
    out["model"] = {"id": m.id, "object": m.object}
    for what, call in [
        ("model_not_found", lambda: client.models.retrieve("no-such-model")),
        ("responses_unknown_model", lambda: client.responses.create(model="no-such-model", input="x")),
        ("unknown_response", lambda: client.responses.retrieve("resp_never_made")),
    ]:
        try:
            call()
            out[what] = "no error"
        except openai.NotFoundError as e:
            out[what] = {"status": e.status_code, "body": e.body}

    if second:
        # Another replica, sharing response ids through Redis: written in the background,
        # so allow it a moment.
        other = OpenAI(base_url=f"{second}/v1", api_key=api_key, max_retries=0, timeout=30)
        out["second"] = []
        for made in out["created"][2:]:
            deadline = time.monotonic() + 10
            while True:
                try:
                    raw = other.responses.with_raw_response.retrieve(made["id"])
                    break
                except openai.NotFoundError:
                    if time.monotonic() > deadline:
                        raise
                    time.sleep(0.1)
            out["second"].append({"id": raw.parse().id, "endpoint": raw.headers.get("x-hale-endpoint")})
    return out


def anthropic_mode(base_url, api_key, model):
    import anthropic

    client = anthropic.Anthropic(base_url=base_url, api_key=api_key, max_retries=0, timeout=30)
    out = {"sdk_version": anthropic.__version__}
    messages = [{"role": "user", "content": "Say hello through Hale."}]
    raw = client.messages.with_raw_response.create(model=model, max_tokens=64, messages=messages)
    message = raw.parse()
    out["plain"] = {
        "text": "".join(b.text for b in message.content if b.type == "text"),
        "stop_reason": message.stop_reason,
        "endpoint": raw.headers.get("x-hale-endpoint"),
    }
    pieces = []
    arrivals = []
    started = time.monotonic()
    with client.messages.stream(model=model, max_tokens=64, messages=messages) as stream:
        for text in stream.text_stream:
            pieces.append(text)
            arrivals.append(time.monotonic() - started)
        final = stream.get_final_message()
    out["stream"] = {
        "text": "".join(pieces),
        "pieces": len(pieces),
        "stop_reason": final.stop_reason,
        "first_at": arrivals[0],
        "last_at": arrivals[-1],
    }
    count = client.messages.count_tokens(model=model, messages=messages)
    out["count_tokens"] = count.input_tokens
    try:
        client.messages.create(model="no-such-model", max_tokens=8, messages=messages)
        out["not_found"] = "no error"
    except anthropic.NotFoundError as e:
        out["not_found"] = {"status": e.status_code, "body": e.body}
    return out


def ollama_mode(base_url, api_key, model):
    import ollama

    client = ollama.Client(host=base_url, headers={"Authorization": f"Bearer {api_key}"}, timeout=30)
    out = {}
    # ollama-python has no call for /api/version; its own HTTP client (host and headers as
    # configured) asks, as a program checking the server's version would.
    out["version"] = client._client.get("/api/version").json()["version"]
    show = client.show(model)
    out["show"] = {"family": show.details.family, "modelfile": show.modelfile}
    out["ps"] = sorted(m.model for m in client.ps().models)
    out["embeddings"] = len(client.embeddings(model=model, prompt="hello").embedding)
    out["list"] = sorted(m.model for m in client.list().models)
    out["chat"] = client.chat(model=model, messages=[{"role": "user", "content": "hi"}])["message"]["content"]
    out["chat_stream"] = "".join(
        part["message"]["content"]
        for part in client.chat(model=model, messages=[{"role": "user", "content": "hi"}], stream=True)
    )
    out["generate"] = client.generate(model=model, prompt="hi")["response"]
    out["embed"] = len(client.embed(model=model, input=["a", "b"]).embeddings)
    try:
        client.chat(model="no-such-model", messages=[{"role": "user", "content": "hi"}])
        out["not_found"] = "no error"
    except ollama.ResponseError as e:
        out["not_found"] = {"status": e.status_code, "error": e.error, "is_str": isinstance(e.error, str)}
    return out


def main() -> None:
    mode, rest = sys.argv[1], sys.argv[2:]
    run = {"openai": openai_mode, "anthropic": anthropic_mode, "ollama": ollama_mode}[mode]
    print(json.dumps(run(*rest)))


if __name__ == "__main__":
    main()
