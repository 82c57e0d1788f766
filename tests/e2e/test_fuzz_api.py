"""Property-based fuzzing of the live OpenAPI schema: no request, valid or malformed, gets a 5xx.

Schemathesis reads ``/openapi.json`` from the real ``moa api`` process and sends generated
requests to every operation with a valid key: the schema's examples, its coverage cases
(boundary values, wrong types, missing and unexpected fields, methods the path does not allow)
and Hypothesis-generated cases in both positive and negative modes. A second test sends bodies
that are not even the right syntax (broken JSON and JSONL, invalid UTF-8, deep nesting) to the
endpoints that take one. Each test counts what it sent and asserts, at the end, that not one
request got a 5xx (or no answer) and that the server logged no exception meanwhile.

Each operation is fuzzed as a new tenant that owns one small job, and a share of the generated
cases is steered past the first check (a real job or item id, a real preset, items the input
rules accept), so requests reach real jobs, job creation, storage and real MoA runs on the
simulator. Only presets whose models are up are named, so a 502 (the models failed) would be
a bug here too; a job that may be created never carries a generated webhook URL.

Streams are bounded: Schemathesis reads an event stream (``GET /v1/jobs/{job_id}/events``, a
streamed chat completion) for at most ``TIMEOUT_S`` seconds, and a read timeout on ``/events``
counts as an answer, since that stream lasts as long as its job.

Schemathesis's pytest integration for a schema from a fixture (``schemathesis.pytest.
from_fixture``) does not run on pytest 9.2 (it sets ``Node._nodeid``, which is gone), so the
per-operation tests are built here with the same builder it uses, ``create_test``.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import requests
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from schemathesis.generation.hypothesis.builder import (
    HypothesisTestConfig,
    HypothesisTestMode,
    create_test,
)

from tests.e2e.conftest import RATE_LIMIT

MIN_REQUESTS = 500
TIMEOUT_S = 10.0
# A fresh key (so a fresh tenant) well before the per-key rate limit: 429s stay rare.
REQUESTS_PER_KEY = RATE_LIMIT - 40
EVENTS = "/v1/jobs/{job_id}/events"
# Presets of the test config that make one simulator call per item: the ones the fuzzer is
# steered to, so generated jobs and chat requests get past "no such preset" and really run.
CHEAP_PRESETS = ("one", "cached", "tiny")
PRESETS = ("lite", "one", "quorum", "degraded", "cached", "tiny")

# Derandomized, so CI sends the same requests on every run; no example database; no shrinking,
# since a 5xx is recorded rather than raised. Chat requests may each run a real MoA job, so
# that endpoint gets fewer generated cases than the rest.
CONFIG = """
suppress-health-check = ["all"]
request-timeout = 10
max-stream-events = 50

[generation]
mode = "all"
max-examples = 40
deterministic = true
no-shrink = true
database = "none"

[phases.examples]
enabled = true
[phases.coverage]
enabled = true
[phases.fuzzing]
enabled = true
[phases.stateful]
enabled = false

[[operations]]
include-path = "/v1/chat/completions"
generation = { max-examples = 20 }
"""


@dataclass
class Tally:
    """The requests a test sent, by label and status, and those that got a 5xx or no answer."""

    new_key: Callable[[], tuple[str, str]]
    sent: Counter[str] = field(default_factory=Counter)
    statuses: Counter[int] = field(default_factory=Counter)
    answers: Counter[tuple[str, int | None]] = field(default_factory=Counter)
    kinds: Counter[str] = field(default_factory=Counter)
    server_errors: list[str] = field(default_factory=list)
    key: str = ""
    key_uses: int = 0

    def fresh_key(self) -> str:
        self.key, self.key_uses = self.new_key()[1], 0
        return self.key

    def auth(self) -> dict[str, str]:
        if not self.key or self.key_uses >= REQUESTS_PER_KEY:
            self.fresh_key()
        self.key_uses += 1
        return {"Authorization": f"Bearer {self.key}"}

    def record(self, label: str, status: int | None, request: str, detail: str = "") -> None:
        self.sent[label] += 1
        self.answers[label, status] += 1
        if status is not None:
            self.statuses[status] += 1
        if status is None or status >= 500:
            self.server_errors.append(f"{status or 'no answer'} {detail[:300]}\n  {request}")

    @property
    def total(self) -> int:
        return sum(self.sent.values())

    def summary(self) -> str:
        kinds = f"by phase/mode {dict(self.kinds)}; " if self.kinds else ""
        statuses = dict(sorted(self.statuses.items()))
        # Operations by the statuses they answered, leaving out the 405s of methods not allowed.
        answers: dict[str, dict[int | None, int]] = {}
        for (label, status), count in sorted(self.answers.items(), key=str):
            if status != 405:
                answers.setdefault(label, {})[status] = count
        return f"{self.total} requests; by status {statuses}; {kinds}by operation {answers}"


class ServerLog:
    """The part of the API's log written since it was opened: what the fuzzing made it log."""

    def __init__(self, path: Path):
        self.path = path
        self.start = path.stat().st_size

    def exceptions(self) -> list[str]:
        with self.path.open("rb") as log:
            log.seek(self.start)
            text = log.read().decode("utf-8", "replace")
        return [block[:2000] for block in text.split("Traceback (most recent call last)")[1:]]


@dataclass(frozen=True)
class Owned:
    """A job (and one of its items) of the tenant whose key is in use."""

    job_id: int
    item_id: int


def _own_job(api: Any, key: str) -> Owned:
    with api.client(key) as client:
        body = {
            "preset": "one",
            "items": [{"custom_id": "a", "prompt": "hi"}, {"custom_id": "b", "prompt": "yo"}],
        }
        created = client.post("/v1/jobs", json=body)
        assert created.status_code == 201, created.text
        job_id = created.json()["id"]
        items = client.get(f"/v1/jobs/{job_id}/items").json()["data"]
    return Owned(job_id, items[0]["item_id"])


def _steer(case: Any, n: int, owned: Owned) -> None:
    """Point a third of the cases with a job or item id at a real one of the caller's, and make
    every second job and every fourth chat request name a real preset and pass the input rules
    (items with a custom_id and a prompt, a last message from the user), the rest left as
    generated: so the fuzzer reaches real jobs, job creation, storage and MoA runs, not only
    the first 404 or 400."""
    preset = CHEAP_PRESETS[n % len(CHEAP_PRESETS)]
    body = case.body if isinstance(case.body, dict) else {}
    query = case.query if isinstance(case.query, dict) else {}
    path = case.path_parameters if isinstance(case.path_parameters, dict) else {}
    if n % 3 == 0 and "job_id" in path:
        path["job_id"] = owned.job_id
    if n % 3 == 0 and "item_id" in path:
        path["item_id"] = owned.item_id
    if case.path == "/v1/jobs" and n % 2 == 0:
        if isinstance(body.get("preset"), str):
            body["preset"] = preset
        if "preset" in query:
            query["preset"] = preset
        items = body.get("items")
        for i, item in enumerate(items if isinstance(items, list) else []):
            if isinstance(item, dict):
                item.setdefault("custom_id", f"item-{i}")
                if "messages" not in item:
                    item.setdefault("prompt", f"question {i}")
    if case.path == "/v1/jobs" and (
        body.get("preset") in PRESETS or query.get("preset") in PRESETS
    ):
        # A job that may be created sends no webhook to a generated host: loopback only.
        body.pop("webhook_url", None)
        query.pop("webhook_url", None)
    if case.path == "/v1/chat/completions" and n % 4 == 0:
        if isinstance(body.get("model"), str):
            body["model"] = preset
        messages = body.get("messages")
        if isinstance(messages, list) and messages and isinstance(messages[-1], dict):
            messages[-1]["role"] = "user"


def _kind(case: Any) -> str:
    meta = getattr(case, "meta", None)
    if meta is None:
        return "unknown"
    return f"{meta.phase.name.value}/{meta.generation.mode.value}"


def _run_operation(operation: Any, send: Callable[[Any], None]) -> None:
    """One operation's examples, coverage cases and generated cases through ``send``."""
    config = operation.schema.config
    test = create_test(
        operation=operation,
        test_func=send,
        config=HypothesisTestConfig(
            project=config,
            modes=[
                HypothesisTestMode.EXAMPLES,
                HypothesisTestMode.COVERAGE,
                HypothesisTestMode.FUZZING,
            ],
            settings=config.get_hypothesis_settings(operation=operation, phase="fuzzing"),
            explicit_setting_names=config.explicit_hypothesis_settings(
                operation=operation, phase="fuzzing"
            ),
        ),
    )
    test()


def test_generated_requests_to_every_operation_get_no_5xx(services, api_server, new_key):
    log = ServerLog(services.home / "api.log")
    config = schemathesis.Config.from_str(CONFIG)
    schema = schemathesis.openapi.from_url(api_server.url + "/openapi.json", config=config)
    schema.config.update(base_url=api_server.url)
    operations = [result.ok() for result in schema.get_all_operations()]
    tally = Tally(new_key)
    session = requests.Session()

    def send(case: Any) -> None:
        label = f"{case.method.upper()} {case.path}"
        _steer(case, tally.sent[label], owned)
        tally.kinds[_kind(case)] += 1
        # A valid key replaces the generated Authorization header: the cases must get past
        # authentication to reach the handlers.
        auth = tally.auth()
        try:
            response = case.call(session=session, headers=auth, timeout=TIMEOUT_S)
        except requests.exceptions.RequestException as exc:
            # A job's event stream lasts as long as the job: a read timeout there is an answer.
            timed_out = isinstance(exc, requests.exceptions.ReadTimeout)
            status = 200 if timed_out and case.path == EVENTS else None
            tally.record(label, status, case.as_curl_command(headers=auth), repr(exc))
            return
        tally.record(label, response.status_code, case.as_curl_command(headers=auth), response.text)

    with session:
        for operation in operations:  # a new tenant for each, with a job of its own
            owned = _own_job(api_server, tally.fresh_key())
            _run_operation(operation, send)

    print(tally.summary())
    assert not tally.server_errors, "\n".join(tally.server_errors)
    assert not log.exceptions(), "\n".join(log.exceptions())
    assert tally.total >= MIN_REQUESTS, tally.summary()
    # Every operation was fuzzed, with malformed data too, and mostly past authentication.
    assert {f"{op.method.upper()} {op.path}" for op in operations} <= set(tally.sent)
    assert tally.kinds["coverage/negative"] and tally.kinds["fuzzing/negative"], tally.summary()
    assert tally.statuses[401] < tally.total // 10, tally.summary()
    assert tally.statuses[201] + tally.statuses[200] > 50, tally.summary()


# --- bodies that are not even the right syntax ----------------------------------------------

MALFORMED_EXAMPLES = 150
BODY_TARGETS = [
    ("/v1/jobs", "application/json"),
    ("/v1/jobs?preset=one", "application/x-ndjson"),
    ("/v1/jobs?preset=one&skip_invalid=true", "application/x-ndjson"),
    ("/v1/chat/completions", "application/json"),
]
VALID_DOCUMENTS = [
    {"preset": "one", "items": [{"prompt": "hi"}]},
    {"model": "one", "messages": [{"role": "user", "content": "hi"}]},
    {"custom_id": "a", "prompt": "hello"},
    {"messages": [{"role": "user", "content": "x"}]},
]


def _nearly_valid() -> st.SearchStrategy[bytes]:
    """A valid document cut short or with one byte changed, or lines of such documents."""
    valid = st.sampled_from([json.dumps(doc).encode() for doc in VALID_DOCUMENTS])
    cut = st.tuples(valid, st.integers(0, 60)).map(lambda pair: pair[0][: pair[1]])
    flipped = st.tuples(valid, st.integers(0, 40), st.integers(0, 255)).map(
        lambda t: t[0][: t[1]] + bytes([t[2]]) + t[0][t[1] + 1 :]
    )
    lines = st.lists(st.one_of(valid, cut, flipped, st.binary(max_size=20)), max_size=4)
    return st.one_of(cut, flipped, lines.map(b"\n".join))


# Sent to every target as they are; then Hypothesis draws more around them.
FIXED_BODIES = [
    b"",
    b"{",
    b"[]",
    b"null",
    b"1e999999",
    b'"\\u0000"',
    b"\xff\xfe\x00",
    b"\n\n\n",
    b"[" * 5000 + b"]" * 5000,
    b'{"a":' * 2000 + b"1" + b"}" * 2000,
    b'{"prompt": "a"}\n{"prompt": "a"}\n',
    b'{"custom_id": "n", "prompt": "a\\u0000b"}',
    b'{"custom_id": "s", "prompt": "\\udc00"}',
    b'{"custom_id": "k", "prompt": "hi", "\\u0000": 1}',
    b'{"custom_id": "d", "prompt": "hi", "m": ' + b"[" * 500 + b"]" * 500 + b"}",
    b'{"custom_id": "D", "prompt": "hi", "m": ' + b"[" * 5000 + b"]" * 5000 + b"}",
    b'{"preset": "one", "items": [{}]}',
    b'{"preset": "one", "items": "x"}',
    b'{"preset": "one", "items": [{"custom_id": "n", "prompt": "a\\u0000"}]}',
    b'{"preset": "one", "items": [{"custom_id": "s", "prompt": "\\ud800"}]}',
    # A valid URL, but longer than the column it goes in (and on loopback, should it be used).
    b'{"preset": "one", "items": [{"custom_id": "u", "prompt": "hi"}], "webhook_url": '
    + b'"http://127.0.0.1:9/'
    + b"a" * 2040
    + b'"}',
    b'{"model": "one", "messages": [{"role": "user", "content": "a\\u0000"}]}',
    b'{"model": "one", "messages": [{"role": "user", "content": "\\ud800"}]}',
]
MALFORMED = st.one_of(
    st.binary(max_size=200),
    st.text(max_size=100).map(str.encode),
    st.sampled_from(FIXED_BODIES),
    _nearly_valid(),
)


def test_malformed_bodies_get_no_5xx(services, api_server, new_key):
    log = ServerLog(services.home / "api.log")
    tally = Tally(new_key)
    with httpx.Client(base_url=api_server.url, timeout=TIMEOUT_S) as client:

        def post(target: tuple[str, str], body: bytes) -> None:
            path, content_type = target
            label, request = f"POST {path} {content_type}", f"POST {path} with {body[:200]!r}"
            headers = {**tally.auth(), "Content-Type": content_type}
            try:
                response = client.post(path, content=body, headers=headers)
            except httpx.HTTPError as exc:
                tally.record(label, None, request, repr(exc))
                return
            tally.record(label, response.status_code, request, response.text)

        for target in BODY_TARGETS:
            for body in FIXED_BODIES:
                post(target, body)
        fuzz = given(target=st.sampled_from(BODY_TARGETS), body=MALFORMED)(post)
        settings(
            max_examples=MALFORMED_EXAMPLES,
            derandomize=True,
            database=None,
            deadline=None,
            suppress_health_check=list(HealthCheck),
        )(fuzz)()

    print(tally.summary())
    assert not tally.server_errors, "\n".join(tally.server_errors)
    assert not log.exceptions(), "\n".join(log.exceptions())
    assert tally.total >= len(BODY_TARGETS) * len(FIXED_BODIES) + MALFORMED_EXAMPLES // 2
    assert len(tally.sent) == len(BODY_TARGETS), tally.summary()
