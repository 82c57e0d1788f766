"""The HTTP API as a client drives it: real `moa api`, workers, Postgres, Valkey, simulator."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, HTTPServer
from typing import Any, ClassVar

import httpx
import pytest

from moa.services import free_port
from tests.conftest import WEBHOOK_SECRET, wait_for
from tests.e2e.conftest import RATE_LIMIT


def items(n: int, prefix: str = "q") -> list[dict[str, Any]]:
    return [{"custom_id": f"{prefix}{i}", "prompt": f"API question {i}"} for i in range(n)]


def finished(client: httpx.Client, job_id: int) -> dict[str, Any]:
    def done() -> dict[str, Any] | None:
        job = client.get(f"/v1/jobs/{job_id}").json()
        return job if job["status"] in ("completed", "failed", "cancelled") else None

    return wait_for(done, 90, f"job {job_id} to end")  # type: ignore[no-any-return]


def test_health_and_readiness_need_no_key(api_server):
    with api_server.client(None) as client:
        assert client.get("/healthz").json() == {"status": "ok"}
        ready = client.get("/readyz")
        assert ready.status_code == 200 and ready.json()["checks"] == {
            "database": "ok",
            "broker": "ok",
        }


@pytest.mark.parametrize("header", [None, "Bearer nope", "Basic abc", "Bearer"])
def test_every_endpoint_but_health_needs_a_valid_key(api_server, header):
    headers = {"Authorization": header} if header else {}
    with httpx.Client(base_url=api_server.url, headers=headers) as client:
        for method, path in [("GET", "/v1/jobs"), ("POST", "/v1/jobs"), ("GET", "/v1/jobs/1"),
                             ("GET", "/v1/models"), ("GET", "/metrics"), ("GET", "/v1/items/1/trace"),
                             ("POST", "/v1/chat/completions")]:  # fmt: skip
            response = client.request(method, path, json={})
            assert response.status_code == 401, (method, path)
            assert response.json()["error"]["code"] == "unauthorized"


def test_a_json_job_runs_and_its_results_stream_back_in_order(api_server, new_key):
    _, key = new_key()
    with api_server.client(key) as client:
        created = client.post("/v1/jobs", json={"preset": "lite", "items": items(5)[::-1]})
        assert created.status_code == 201, created.text
        job = finished(client, created.json()["id"])
        assert job["request_counts"] == {"total": 5, "completed": 5, "failed": 0, "cancelled": 0}
        lines = client.get(f"/v1/jobs/{job['id']}/results").text.splitlines()
        assert [json.loads(line)["custom_id"] for line in lines] == ["q4", "q3", "q2", "q1", "q0"]
        page = client.get(f"/v1/jobs/{job['id']}/items", params={"limit": 2}).json()
        assert len(page["data"]) == 2 and page["has_more"]
        rest = client.get(
            f"/v1/jobs/{job['id']}/items", params={"after": page["next_cursor"]}
        ).json()
        assert len(rest["data"]) == 3 and not rest["has_more"]
        trace = client.get(f"/v1/items/{page['data'][0]['item_id']}/trace").json()
        assert [(c["layer"], c["role"]) for c in trace["calls"]][-1] == (3, "aggregator")
        assert len(trace["calls"]) == 7


def test_a_jsonl_body_is_streamed_in_and_events_report_progress(api_server, new_key):
    _, key = new_key()
    body = "".join(json.dumps(i) + "\n" for i in items(4, "s"))
    with api_server.client(key) as client:
        created = client.post("/v1/jobs", params={"preset": "lite"}, content=body,
                              headers={"Content-Type": "application/x-ndjson"})  # fmt: skip
        assert created.status_code == 201, created.text
        job_id = created.json()["id"]
        names: list[str] = []
        with client.stream("GET", f"/v1/jobs/{job_id}/events") as events:
            for line in events.iter_lines():
                if line.startswith("event: "):
                    names.append(line[7:])
        assert names.count("item") == 4 and names[-1] == "end" and "progress" in names


@pytest.mark.parametrize(
    ("body", "status", "code"),
    [
        ({"preset": "lite", "items": []}, 400, "invalid_request"),
        ({"preset": "nope", "items": items(1)}, 400, "invalid_config"),
        ({"preset": "lite", "items": [{"prompt": "no id"}]}, 400, "invalid_input"),
        ({"preset": "lite", "items": items(1), "budget": -1}, 400, "invalid_request"),
        ({"preset": "lite", "items": items(1), "extra": 1}, 400, "invalid_request"),
        ({"preset": "lite", "items": items(1), "webhook_url": "ftp://x"}, 400, "invalid_request"),
        (
            {"preset": "lite", "items": [{"custom_id": "a", "prompt": "x" * 3_000_000}]},
            413,
            "too_large",
        ),
    ],
)
def test_bad_submissions_get_a_clear_4xx_and_create_nothing(
    api_server, new_key, body, status, code
):
    _, key = new_key()
    with api_server.client(key) as client:
        response = client.post("/v1/jobs", json=body)
        assert response.status_code == status, response.text
        assert response.json()["error"]["code"] == code
        assert client.get("/v1/jobs").json()["data"] == []


def test_malformed_json_and_bad_lines_are_reported(api_server, new_key):
    _, key = new_key()
    with api_server.client(key) as client:
        broken = client.post(
            "/v1/jobs", content=b"{not json", headers={"Content-Type": "application/json"}
        )
        assert broken.status_code == 400
        body = '{"custom_id": "a", "prompt": "ok"}\n{oops\n'
        lines = client.post("/v1/jobs", params={"preset": "lite"}, content=body,
                            headers={"Content-Type": "application/x-ndjson"})  # fmt: skip
        assert lines.status_code == 400
        assert lines.json()["error"]["lines"][0]["line"] == 2


def test_an_idempotency_key_returns_the_same_job_or_a_conflict(api_server, new_key):
    _, key = new_key()
    with api_server.client(key) as client:
        headers = {"Idempotency-Key": "report-2026-11-22"}
        first = client.post("/v1/jobs", json={"preset": "lite", "items": items(1)}, headers=headers)
        again = client.post("/v1/jobs", json={"preset": "lite", "items": items(1)}, headers=headers)
        other = client.post("/v1/jobs", json={"preset": "lite", "items": items(2)}, headers=headers)
    assert (first.status_code, again.status_code, other.status_code) == (201, 200, 409)
    assert again.json()["id"] == first.json()["id"]


def test_a_tenant_never_sees_another_tenants_jobs(api_server, new_key):
    (_, key_a), (_, key_b) = new_key(), new_key()
    with api_server.client(key_a) as a, api_server.client(key_b) as b:
        job = finished(
            a, a.post("/v1/jobs", json={"preset": "lite", "items": items(1)}).json()["id"]
        )
        item_id = a.get(f"/v1/jobs/{job['id']}/items").json()["data"][0]["item_id"]
        for method, path in [("GET", f"/v1/jobs/{job['id']}"), ("POST", f"/v1/jobs/{job['id']}/cancel"),
                             ("GET", f"/v1/jobs/{job['id']}/items"), ("GET", f"/v1/jobs/{job['id']}/results"),
                             ("GET", f"/v1/jobs/{job['id']}/events"), ("GET", f"/v1/items/{item_id}/trace")]:  # fmt: skip
            response = b.request(method, path)
            assert response.status_code == 404, (method, path)
        assert b.get("/v1/jobs").json()["data"] == []
        assert a.get(f"/v1/items/{item_id}/trace").status_code == 200


def test_the_official_openai_client_uses_a_preset_as_a_model(api_server, new_key):
    from openai import OpenAI

    _, key = new_key()
    client = OpenAI(base_url=api_server.url + "/v1", api_key=key, max_retries=0)
    question = [{"role": "user", "content": "What do tides depend on?"}]

    assert "lite" in [m.id for m in client.models.list()]
    plain = client.chat.completions.create(model="lite", messages=question)
    assert "answer to: What do tides depend on?" in plain.choices[0].message.content
    assert plain.usage.total_tokens > 0

    chunks = list(client.chat.completions.create(model="lite", messages=question, stream=True,
                                                 stream_options={"include_usage": True}))  # fmt: skip
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert "answer to: What do tides depend on?" in text
    assert len([c for c in chunks if c.choices and c.choices[0].delta.content]) > 3  # streamed
    assert chunks[-1].usage is not None and chunks[-1].usage.total_tokens > 0
    client.close()


def test_an_unknown_model_is_a_404_in_openais_error_shape(api_server, new_key):
    _, key = new_key()
    with api_server.client(key) as client:
        response = client.post(
            "/v1/chat/completions",
            json={"model": "gpt-9", "messages": [{"role": "user", "content": "x"}]},
        )
    assert response.status_code == 404 and response.json()["error"]["code"] == "model_not_found"


class _Receiver(BaseHTTPRequestHandler):
    received: ClassVar[list[tuple[dict[str, str], bytes]]] = []

    def do_POST(self) -> None:  # the handler's name is http.server's
        body = self.rfile.read(int(self.headers["Content-Length"]))
        self.received.append((dict(self.headers), body))
        self.send_response(200)
        self.end_headers()

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def receiver() -> Iterator[tuple[str, list[tuple[dict[str, str], bytes]]]]:
    server = HTTPServer(("127.0.0.1", free_port()), _Receiver)
    _Receiver.received = []
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_port}/hook", _Receiver.received
    server.shutdown()
    server.server_close()
    thread.join()


def test_a_webhook_gets_exactly_one_signed_job_completed(api_server, new_key, receiver, engine):
    from sqlalchemy.orm import Session

    from db.models import Job
    from workers.webhooks import verify

    url, received = receiver
    _, key = new_key()
    body = {"preset": "lite", "items": items(2), "webhook_url": url}
    with api_server.client(key) as client:
        job_ids = [client.post("/v1/jobs", json=body).json()["id"] for _ in range(2)]
        for job_id in job_ids:
            finished(client, job_id)
    wait_for(lambda: len(received) >= 2, 30, "both webhooks")
    events = [json.loads(body) for _, body in received]
    assert sorted(e["data"]["id"] for e in events) == sorted(job_ids)  # one each, no repeats
    for headers, raw in received:
        assert verify(WEBHOOK_SECRET, headers["Moa-Signature"], raw)
        assert not verify("another-secret", headers["Moa-Signature"], raw)
    assert {e["type"] for e in events} == {"job.completed"}
    with Session(engine) as session:
        assert all(session.get(Job, job_id).webhook_sent_at is not None for job_id in job_ids)


def test_metrics_expose_jobs_calls_tokens_cost_and_latency(api_server, new_key):
    _, key = new_key()
    with api_server.client(key) as client:
        finished(
            client, client.post("/v1/jobs", json={"preset": "lite", "items": items(1)}).json()["id"]
        )
        text = client.get("/metrics").text
    for name in ("moa_jobs{", "moa_calls_total{", "moa_tokens_total{", "moa_cost_usd_total{",
                 "moa_call_latency_seconds_bucket{", "# TYPE moa_call_latency_seconds histogram"):  # fmt: skip
        assert name in text, name


def test_a_key_over_its_rate_limit_gets_429_with_retry_after(api_server, new_key):
    _, key = new_key()
    with api_server.client(key) as client:
        statuses = [client.get("/v1/jobs").status_code for _ in range(RATE_LIMIT + 1)]
        limited = client.get("/v1/jobs")
    assert statuses[:RATE_LIMIT] == [200] * RATE_LIMIT and statuses[-1] == 429
    assert (
        limited.json()["error"]["code"] == "rate_limited"
        and int(limited.headers["Retry-After"]) >= 1
    )
