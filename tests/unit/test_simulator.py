"""Tests for the simulated OpenAI-compatible provider, driven over real HTTP."""

from __future__ import annotations

import json
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
import pytest

from moa.simulator import SimConfig, SimServer
from tests.conftest import wait_for


def _root(server: SimServer) -> str:
    return f"http://{server.host}:{server.port}"


def _chat_body(model: str, user: str, system: str | None = None) -> dict[str, Any]:
    messages = [{"role": "system", "content": system}] if system is not None else []
    messages.append({"role": "user", "content": user})
    return {"model": model, "messages": messages, "temperature": 0.7, "max_tokens": 64}


@pytest.fixture(scope="module")
def server() -> Iterator[SimServer]:
    with SimServer(SimConfig(seed=7)) as sim:
        yield sim


@pytest.fixture
def client(server: SimServer) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=_root(server), timeout=10.0) as http:
        # One server serves the module; a reset gives each test a clean log and seq.
        http.post("/_sim/reset").raise_for_status()
        yield http


def test_start_picks_a_free_port(server: SimServer) -> None:
    assert server.port > 0
    assert server.base_url == f"http://127.0.0.1:{server.port}/v1"


def test_chat_completion_shape(client: httpx.Client) -> None:
    body = _chat_body("m1", "What is the capital of France?", system="Be brief.")
    resp = client.post("/v1/chat/completions", json=body)
    assert resp.status_code == 200
    data = resp.json()
    assert data["object"] == "chat.completion"
    assert data["model"] == "m1"
    assert isinstance(data["id"], str) and isinstance(data["created"], int)
    (choice,) = data["choices"]
    assert choice["index"] == 0 and choice["finish_reason"] == "stop"
    assert choice["message"]["role"] == "assistant"
    text = choice["message"]["content"]
    assert text == "[sim model=m1 seq=1] answer to: What is the capital of France?"
    usage = data["usage"]
    assert usage["prompt_tokens"] == len("Be brief.What is the capital of France?") // 4
    assert usage["completion_tokens"] == len(text) // 4
    assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]


def test_text_completion_shape(client: httpx.Client) -> None:
    prompt = "Answer briefly.\nQuestion: old one\nQuestion: What is 2+2?\nAnswer:"
    resp = client.post("/v1/completions", json={"model": "m2", "prompt": prompt, "stop": ["\n"]})
    assert resp.status_code == 200
    data = resp.json()
    assert data["object"] == "text_completion"
    (choice,) = data["choices"]
    assert choice["index"] == 0 and choice["finish_reason"] == "stop"
    assert choice["text"] == "[sim model=m2 seq=1] answer to: What is 2+2?"
    assert data["usage"]["prompt_tokens"] == len(prompt) // 4


def test_answers_are_distinct_per_call(client: httpx.Client) -> None:
    body = _chat_body("m1", "same question")
    texts = {
        client.post("/v1/chat/completions", json=body).json()["choices"][0]["message"]["content"]
        for _ in range(3)
    }
    assert len(texts) == 3


def test_answer_echoes_question_and_counts_numbered_answers(client: httpx.Client) -> None:
    system = "Synthesize these responses:\n[1] Paris\n[2] Lyon\n[2] repeated\nsee [3] inline"
    question = "Which city is the capital of France? Please answer in one word only."
    data = client.post("/v1/chat/completions", json=_chat_body("agg", question, system)).json()
    text = data["choices"][0]["message"]["content"]
    assert text == f"[sim model=agg seq=1] answer to: {question[:60]} (saw 2 numbered answers)"


def test_completion_counts_numbered_answers_in_prompt(client: httpx.Client) -> None:
    prompt = "[1] a\n[2] b\n[3] c\nQuestion:\n  Which is best?\nAnswer:"
    data = client.post("/v1/completions", json={"model": "agg", "prompt": prompt}).json()
    assert data["choices"][0]["text"].endswith("answer to: Which is best? (saw 3 numbered answers)")


def test_requests_are_recorded_in_order(client: httpx.Client) -> None:
    first = _chat_body("a", "q1")
    second = {"model": "b", "prompt": "Question: q2"}
    third = _chat_body("a", "q3")
    client.post("/v1/chat/completions", json=first)
    client.post("/v1/completions", json=second)
    client.post("/v1/chat/completions", json=third)

    log = client.get("/_sim/requests").json()
    assert log == [
        {"seq": 1, "path": "/v1/chat/completions", "model": "a", "body": first},
        {"seq": 2, "path": "/v1/completions", "model": "b", "body": second},
        {"seq": 3, "path": "/v1/chat/completions", "model": "a", "body": third},
    ]
    assert [e["seq"] for e in client.get("/_sim/requests", params={"model": "a"}).json()] == [1, 3]

    stats = client.get("/_sim/stats").json()
    assert stats["requests"] == 3
    assert stats["by_model"] == {"a": 2, "b": 1}
    assert stats["in_flight"] == {"a": 0, "b": 0}
    assert stats["failures_injected"] == 0

    models = client.get("/v1/models").json()
    assert models["object"] == "list"
    assert [m["id"] for m in models["data"]] == ["sim", "a", "b"]


def test_reset_clears_log_and_stats(client: httpx.Client) -> None:
    client.post("/v1/chat/completions", json=_chat_body("a", "q"))
    client.post("/_sim/reset").raise_for_status()
    assert client.get("/_sim/requests").json() == []
    assert client.get("/_sim/stats").json()["requests"] == 0


@pytest.mark.parametrize(
    "content",
    [b"{not json", b"[1, 2]", b'{"messages": [{"role": "user", "content": "hi"}]}'],
    ids=["malformed", "not-an-object", "missing-model"],
)
def test_bad_request_gives_400(client: httpx.Client, content: bytes) -> None:
    resp = client.post(
        "/v1/chat/completions", content=content, headers={"content-type": "application/json"}
    )
    assert resp.status_code == 400
    error = resp.json()["error"]
    assert error["type"] == "invalid_request_error"
    assert error["message"]
    assert client.get("/_sim/requests").json() == []


def test_fail_rate_one_always_fails() -> None:
    with (
        SimServer(SimConfig(fail_rate=1.0, seed=1)) as sim,
        httpx.Client(base_url=_root(sim)) as http,
    ):
        resp = http.post("/v1/chat/completions", json=_chat_body("m", "q"))
        assert resp.status_code == 500
        error = resp.json()["error"]
        assert error["type"] == "server_error"
        assert "simulated failure" in error["message"]
        assert http.get("/_sim/stats").json()["failures_injected"] == 1


def _post_chat(base_url: str, question: str) -> int:
    with httpx.Client(base_url=base_url, timeout=10.0) as http:
        return http.post("/chat/completions", json=_chat_body("slow", question)).status_code


def test_peak_in_flight_counts_concurrent_requests() -> None:
    with SimServer(SimConfig(latency_ms=300)) as sim:
        with ThreadPoolExecutor(max_workers=4) as pool:
            codes = list(pool.map(lambda i: _post_chat(sim.base_url, f"q{i}"), range(4)))
        assert codes == [200] * 4
        with httpx.Client(base_url=_root(sim)) as http:
            stats = http.get("/_sim/stats").json()
        assert stats["peak_in_flight"]["slow"] >= 4
        assert stats["in_flight"]["slow"] == 0


# --- faults -----------------------------------------------------------------------------------


def _script(client: httpx.Client, model: str, faults: list[str]) -> None:
    client.post("/_sim/script", json={"model": model, "faults": faults}).raise_for_status()


def _events(text: str) -> list[dict[str, str]]:
    """SSE events as dicts of their fields; every event must end with a blank line."""
    assert text.endswith("\n\n")
    events = []
    for block in text[:-2].split("\n\n"):
        fields = dict(line.split(": ", 1) for line in block.split("\n"))
        events.append(fields)
    return events


def _stream_events(client: httpx.Client, path: str, body: dict[str, Any]) -> list[dict[str, str]]:
    resp = client.post(path, json={**body, "stream": True})
    assert resp.status_code == 200
    assert resp.headers["content-type"].startswith("text/event-stream")
    return _events(resp.text)


@pytest.mark.parametrize(
    ("fault", "status", "kind", "retry_after"),
    [
        ("429", 429, "requests", "1"),
        ("429:2", 429, "requests", "2"),
        ("500", 500, "server_error", None),
        ("503", 503, "server_error", None),
        ("503:0.5", 503, "server_error", "0.5"),
    ],
)
def test_error_faults_are_seen_by_the_client(
    client: httpx.Client, fault: str, status: int, kind: str, retry_after: str | None
) -> None:
    _script(client, "m", [fault])
    resp = client.post("/v1/chat/completions", json=_chat_body("m", "q"))
    assert resp.status_code == status
    assert resp.headers.get("retry-after") == retry_after
    error = resp.json()["error"]
    assert error["type"] == kind
    assert "simulated failure" in error["message"]
    stats = client.get("/_sim/stats").json()
    assert stats["faults"] == {fault.split(":")[0]: 1}
    assert stats["failures_injected"] == 1
    assert stats["in_flight"] == {"m": 0}


def test_malformed_body_is_not_json(client: httpx.Client) -> None:
    _script(client, "m", ["malformed"])
    resp = client.post("/v1/chat/completions", json=_chat_body("m", "q"))
    assert resp.status_code == 200
    with pytest.raises(ValueError):
        resp.json()


def test_malformed_stream_has_an_event_that_is_not_json(client: httpx.Client) -> None:
    _script(client, "m", ["malformed"])
    events = _stream_events(client, "/v1/chat/completions", _chat_body("m", "q"))
    bad = [e for e in events if e["data"].startswith("{not json")]
    assert len(bad) == 1
    assert events[-1] == {"data": "[DONE]"}


def test_disconnect_cuts_a_plain_answer(client: httpx.Client) -> None:
    _script(client, "m", ["disconnect"])
    with pytest.raises((httpx.RemoteProtocolError, httpx.ReadError)):
        client.post("/v1/chat/completions", json=_chat_body("m", "q"))
    assert client.get("/_sim/stats").json()["faults"] == {"disconnect": 1}


def test_disconnect_cuts_a_stream_before_done(client: httpx.Client) -> None:
    _script(client, "m", ["disconnect"])
    lines: list[str] = []
    body = {**_chat_body("m", "a question of several words"), "stream": True}
    with (
        pytest.raises((httpx.RemoteProtocolError, httpx.ReadError)),
        client.stream("POST", "/v1/chat/completions", json=body) as resp,
    ):
        assert resp.status_code == 200
        lines.extend(resp.iter_lines())
    data = [line for line in lines if line.startswith("data: ")]
    assert len(data) >= 2  # the role chunk and some words arrived
    assert "data: [DONE]" not in data


def test_slow_answers_normally_after_the_wait(client: httpx.Client) -> None:
    _script(client, "m", ["slow:150"])
    resp = client.post("/v1/chat/completions", json=_chat_body("m", "q"))
    assert resp.status_code == 200
    assert resp.elapsed.total_seconds() >= 0.15
    assert resp.json()["choices"][0]["message"]["content"].endswith("answer to: q")


def test_hang_ends_in_a_client_timeout() -> None:
    config = SimConfig(fail_rate=1.0, faults={"hang": 1}, hang_s=5)
    with SimServer(config) as sim, httpx.Client(base_url=_root(sim)) as http:
        with pytest.raises(httpx.ReadTimeout):
            http.post("/v1/chat/completions", json=_chat_body("m", "q"), timeout=0.5)
        assert http.get("/_sim/stats").json()["faults"] == {"hang": 1}


def test_random_faults_follow_the_mix() -> None:
    config = SimConfig(fail_rate=1.0, faults={"429": 1, "503": 1, "500": 0}, seed=3)
    with SimServer(config) as sim, httpx.Client(base_url=_root(sim)) as http:
        codes = [
            http.post("/v1/chat/completions", json=_chat_body("m", "q")).status_code
            for _ in range(20)
        ]
        assert set(codes) == {429, 503}
        faults = http.get("/_sim/stats").json()["faults"]
        assert faults == {"429": codes.count(429), "503": codes.count(503)}


@pytest.mark.parametrize("faults", [{"teapot": 1.0}, {"500": 0.0}, {"500": -1.0}])
def test_config_rejects_bad_fault_mixes(faults: dict[str, float]) -> None:
    with pytest.raises(ValueError):
        SimConfig(faults=faults)


def test_scripted_faults_are_consumed_in_order(client: httpx.Client) -> None:
    _script(client, "m", ["429", "500", "ok", "503"])

    def status(model: str) -> int:
        return client.post("/v1/chat/completions", json=_chat_body(model, "q")).status_code

    assert status("other") == 200  # scripts are per model
    assert [status("m") for _ in range(6)] == [429, 500, 200, 503, 200, 200]
    assert client.get("/_sim/stats").json()["faults"] == {"429": 1, "500": 1, "503": 1}


def test_empty_script_clears_and_reset_drops_scripts(client: httpx.Client) -> None:
    _script(client, "m", ["500", "500"])
    _script(client, "m", [])
    assert client.post("/v1/chat/completions", json=_chat_body("m", "q")).status_code == 200
    _script(client, "m", ["500"])
    client.post("/_sim/reset").raise_for_status()
    assert client.post("/v1/chat/completions", json=_chat_body("m", "q")).status_code == 200


@pytest.mark.parametrize("faults", [["teapot"], ["500:2"], ["429:soon"], ["429:-1"], [429], "500"])
def test_bad_scripts_are_refused(client: httpx.Client, faults: Any) -> None:
    resp = client.post("/_sim/script", json={"model": "m", "faults": faults})
    assert resp.status_code == 400
    assert resp.json()["error"]["type"] == "invalid_request_error"


# --- streaming --------------------------------------------------------------------------------


def _chat_text(client: httpx.Client, body: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    client.post("/_sim/reset").raise_for_status()
    data = client.post("/v1/chat/completions", json=body).json()
    client.post("/_sim/reset").raise_for_status()  # the stream gets the same seq, so same text
    return data["choices"][0]["message"]["content"], data["usage"]


def test_chat_stream_reassembles_the_plain_answer(client: httpx.Client) -> None:
    body = _chat_body("m", "What is the capital of France?", system="[1] Paris\n[2] Lyon")
    text, usage = _chat_text(client, body)
    body["stream_options"] = {"include_usage": True}
    events = _stream_events(client, "/v1/chat/completions", body)

    assert events[-1] == {"data": "[DONE]"}
    chunks = [json.loads(e["data"]) for e in events[:-1]]
    assert all(c["object"] == "chat.completion.chunk" and c["model"] == "m" for c in chunks)
    assert chunks[0]["choices"][0]["delta"]["role"] == "assistant"
    words = [c["choices"][0]["delta"].get("content") for c in chunks[1:-2]]
    assert len(words) == len(text.split())
    assert "".join(words) == text
    assert chunks[-2]["choices"] == [{"index": 0, "delta": {}, "finish_reason": "stop"}]
    assert chunks[-1]["choices"] == [] and chunks[-1]["usage"] == usage


def test_completion_stream_reassembles_the_plain_answer(client: httpx.Client) -> None:
    body = {"model": "m", "prompt": "[1] a\nQuestion: Which is best?\nAnswer:"}
    client.post("/_sim/reset").raise_for_status()
    text = client.post("/v1/completions", json=body).json()["choices"][0]["text"]
    client.post("/_sim/reset").raise_for_status()
    events = _stream_events(client, "/v1/completions", body)

    assert events[-1] == {"data": "[DONE]"}
    chunks = [json.loads(e["data"]) for e in events[:-1]]
    assert all(c["object"] == "text_completion" for c in chunks)
    assert "".join(c["choices"][0]["text"] for c in chunks) == text
    assert [c["choices"][0]["finish_reason"] for c in chunks][-2:] == [None, "stop"]
    assert all("usage" not in c for c in chunks)  # not asked for


@pytest.mark.parametrize("read_all", [True, False], ids=["complete", "client-leaves"])
def test_stream_is_in_flight_until_it_ends(read_all: bool) -> None:
    # Paced at 20 events/s, the stream lasts over half a second: long enough to look at it.
    with SimServer(SimConfig(tokens_per_s=20)) as sim, httpx.Client(base_url=_root(sim)) as http:
        body = {**_chat_body("m", "several words to pace out"), "stream": True}
        with http.stream("POST", "/v1/chat/completions", json=body) as resp:
            lines = resp.iter_lines()
            assert next(lines).startswith("data: ")
            assert http.get("/_sim/stats").json()["in_flight"] == {"m": 1}
            if read_all:
                assert "data: [DONE]" in list(lines)
        wait_for(
            lambda: http.get("/_sim/stats").json()["in_flight"] == {"m": 0},
            5,
            "the server to finish its bookkeeping",
        )


# --- Anthropic Messages -----------------------------------------------------------------------


def _messages_body(model: str, user: str, system: str | None = None) -> dict[str, Any]:
    body: dict[str, Any] = {
        "model": model,
        "messages": [{"role": "user", "content": user}],
        "max_tokens": 64,
        "temperature": 0.5,
    }
    if system is not None:
        body["system"] = system
    return body


def test_messages_shape(client: httpx.Client) -> None:
    body = _messages_body("claude", "Which city?", system="[1] Paris\n[2] Lyon\n[3] Nice")
    resp = client.post("/v1/messages", json=body)
    assert resp.status_code == 200
    data = resp.json()
    text = "[sim model=claude seq=1] answer to: Which city? (saw 3 numbered answers)"
    assert data["type"] == "message" and data["role"] == "assistant"
    assert data["model"] == "claude" and data["id"]
    assert data["content"] == [{"type": "text", "text": text}]
    assert data["stop_reason"] == "end_turn"
    assert data["usage"] == {
        "input_tokens": len(body["system"] + "Which city?") // 4,
        "output_tokens": len(text) // 4,
    }
    assert client.get("/_sim/requests").json()[0]["path"] == "/v1/messages"
    assert client.get("/_sim/stats").json()["in_flight"] == {"claude": 0}


def test_messages_stream_events(client: httpx.Client) -> None:
    body = _messages_body("claude", "Which city is the capital?")
    plain = client.post("/v1/messages", json=body).json()
    client.post("/_sim/reset").raise_for_status()
    events = _stream_events(client, "/v1/messages", body)

    names = [e["event"] for e in events]
    payloads = [json.loads(e["data"]) for e in events]
    assert [p["type"] for p in payloads] == names
    deltas = names.count("content_block_delta")
    assert deltas > 1
    assert [n for n in names if n != "content_block_delta"] == [
        "message_start",
        "content_block_start",
        "ping",
        "content_block_stop",
        "message_delta",
        "message_stop",
    ]
    start, message_delta = payloads[0], payloads[-2]
    assert start["message"]["usage"] == {
        "input_tokens": plain["usage"]["input_tokens"],
        "output_tokens": 1,
    }
    text = "".join(p["delta"]["text"] for p in payloads if p["type"] == "content_block_delta")
    assert text == plain["content"][0]["text"]
    assert message_delta["delta"]["stop_reason"] == "end_turn"
    assert message_delta["usage"] == {"output_tokens": plain["usage"]["output_tokens"]}


@pytest.mark.parametrize(
    ("fault", "status", "kind"),
    [
        ("429:3", 429, "rate_limit_error"),
        ("500", 500, "api_error"),
        ("503", 503, "overloaded_error"),
    ],
)
def test_messages_errors_have_anthropic_shape(
    client: httpx.Client, fault: str, status: int, kind: str
) -> None:
    _script(client, "claude", [fault])
    resp = client.post("/v1/messages", json=_messages_body("claude", "q"))
    assert resp.status_code == status
    data = resp.json()
    assert data["type"] == "error" and data["error"]["type"] == kind
    assert data["error"]["message"]
    if status == 429:
        assert resp.headers["retry-after"] == "3"


@pytest.mark.parametrize(
    "body",
    [
        {"model": "claude", "messages": [{"role": "user", "content": "q"}]},
        {"model": "claude", "max_tokens": 5, "messages": [{"role": "system", "content": "s"}]},
    ],
    ids=["no-max-tokens", "system-role"],
)
def test_messages_bad_request(client: httpx.Client, body: dict[str, Any]) -> None:
    resp = client.post("/v1/messages", json=body)
    assert resp.status_code == 400
    assert resp.json()["error"]["type"] == "invalid_request_error"


# --- keys -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("path", "body", "headers"),
    [
        (
            "/v1/chat/completions",
            _chat_body("reject-key-1", "q"),
            {"Authorization": "Bearer sk-42"},
        ),
        ("/v1/messages", _messages_body("reject-key-2", "q"), {"x-api-key": "sk-42"}),
    ],
    ids=["bearer", "x-api-key"],
)
def test_rejected_key_is_echoed(
    client: httpx.Client, path: str, body: dict[str, Any], headers: dict[str, str]
) -> None:
    resp = client.post(path, json=body, headers=headers)
    assert resp.status_code == 401
    assert "sk-42" in resp.json()["error"]["message"]
    ok = client.post(path, json={**body, "model": "fine"}, headers=headers)
    assert ok.status_code == 200
