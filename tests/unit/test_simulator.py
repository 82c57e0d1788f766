"""Tests for the simulated OpenAI-compatible provider, driven over real HTTP."""

from __future__ import annotations

from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
import pytest

from moa.simulator import SimConfig, SimServer


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
