"""Simulated LLM provider served over HTTP on loopback: OpenAI-compatible and Anthropic-style.

Used by tests, benchmarks and ``moa sim`` dry runs; its answers echo what each call was sent.

Endpoints:

* ``POST /v1/chat/completions`` and ``POST /v1/completions`` (OpenAI's shapes) and
  ``POST /v1/messages`` (Anthropic's); ``"stream": true`` answers with server-sent events in
  the same provider's format, the same text cut into one chunk per word. OpenAI streams add a
  usage chunk when ``stream_options.include_usage`` is true; Anthropic streams always carry usage.
* ``GET /v1/models``; ``GET /_sim/requests[?model=m]``, ``GET /_sim/stats``,
  ``POST /_sim/reset`` (clears the log, counters and scripts).
* ``POST /_sim/script`` with ``{"model": "m", "faults": ["429:2", "500", "ok"]}`` replaces the
  fault script of model ``m``. Each request for ``m`` takes the next entry, in order, before the
  random ``fail_rate`` draw; ``"ok"`` answers normally and ``[]`` clears the script.

Faults (``SimConfig.faults`` weighs the kinds drawn when a request fails at ``fail_rate``):

* ``429`` (with ``Retry-After``), ``500``, ``503``: an error in the endpoint's own error shape;
* ``slow``: waits ``slow_first_byte_ms`` before answering normally;
* ``hang``: answers nothing until the client gives up (or ``hang_s`` passes, then answers);
* ``disconnect``: drops the connection mid-answer (streams: after a few chunks, before the end);
* ``malformed``: status 200 with a body that is not JSON (streams: one event that is not JSON).

A script entry may carry a number after a colon: ``429:2`` and ``503:2`` send
``Retry-After: 2``, ``slow:250`` waits 250 ms, ``hang:5`` hangs for at most 5 s.

Models named ``same-...`` give the same answer to the same question every time (no sequence
number), so proposals can agree. Models named ``reject-key...`` answer 401 with the API key
they were sent in the error message, as some real providers do, so tests can prove that the
client scrubs keys from its errors.
"""

from __future__ import annotations

import asyncio
import json
import logging
import random
import re
import socket
import threading
import time
from collections import deque
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any

import httpx
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route
from starlette.types import Receive, Scope, Send

JSON = dict[str, Any]

DEFAULT_MODEL = "sim"
QUESTION_CHARS = 60
REJECT_KEY_PREFIX = "reject-key"
FAULT_KINDS = ("429", "500", "503", "slow", "hang", "disconnect", "malformed")

_NUMBERED = re.compile(r"^[ \t]*\[(\d+)\]", re.MULTILINE)
_QUESTION = re.compile(r"^[ \t]*Question:", re.MULTILINE)
_WORD = re.compile(r"\s*\S+\s*")
_ERROR_STATUS = {"429": 429, "500": 500, "503": 503}
# Kinds whose script entries take a number: Retry-After seconds, wait ms, hang seconds.
_ARG_KINDS = frozenset({"429", "503", "slow", "hang"})
_CLIENT_GONE = 499  # nginx's "client closed request": never seen, the client has left
_SSE = "text/event-stream"


@dataclass
class SimConfig:
    latency_ms: float = 0.0
    jitter_ms: float = 0.0
    tokens_per_s: float = 0.0
    fail_rate: float = 0.0
    seed: int | None = None
    faults: dict[str, float] = field(default_factory=lambda: {"500": 1.0})
    retry_after_s: float = 1.0
    slow_first_byte_ms: float = 3000.0
    hang_s: float = 600.0

    def __post_init__(self) -> None:
        unknown = sorted(set(self.faults) - set(FAULT_KINDS))
        if unknown:
            raise ValueError(f"unknown fault kinds {unknown}; known: {', '.join(FAULT_KINDS)}")
        weights = self.faults.values()
        if any(not w >= 0 for w in weights) or not sum(weights) > 0:
            raise ValueError("fault weights must be >= 0 with a positive sum")


class _BadRequest(Exception):
    pass


@dataclass(frozen=True, slots=True)
class _Prompt:
    question: str
    answers_seen: int
    chars: int


@dataclass(frozen=True, slots=True)
class _Fault:
    kind: str
    arg: float | None = None


@dataclass(frozen=True, slots=True)
class _Reply:
    model: str
    seq: int
    text: str
    prompt_tokens: int
    completion_tokens: int


@dataclass(frozen=True, slots=True)
class _Stream:
    """A streamed answer as SSE events: the word pieces sit between a head and a tail."""

    head: list[bytes]
    pieces: list[bytes]
    tail: list[bytes]


# --- reading requests -------------------------------------------------------------------------


async def _parse_body(request: Request) -> JSON:
    try:
        body = json.loads(await request.body())
    except ValueError as exc:
        raise _BadRequest(f"request body is not valid JSON: {exc}") from exc
    if not isinstance(body, dict):
        raise _BadRequest("request body must be a JSON object")
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise _BadRequest("'model' is required and must be a non-empty string")
    return body


def _content_text(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        # Multi-part content (OpenAI parts, Anthropic blocks): only text parts carry prompt text.
        parts = (p.get("text") for p in content if isinstance(p, dict))
        return "\n".join(p for p in parts if isinstance(p, str))
    return ""


def _count_numbered(text: str) -> int:
    return len(set(_NUMBERED.findall(text)))


def _clip(text: str) -> str:
    # Collapsing whitespace keeps the echo on one line whatever the prompt's layout.
    return " ".join(text.split())[:QUESTION_CHARS]


def _last_question(prompt: str) -> str:
    marks = list(_QUESTION.finditer(prompt))
    if not marks:
        return prompt
    rest = prompt[marks[-1].end() :]
    # The question may sit on the marker's line or, in some templates, on the next one.
    return next((line for line in rest.splitlines() if line.strip()), "")


def _messages(body: JSON) -> list[JSON]:
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise _BadRequest("'messages' must be a non-empty list")
    if not all(isinstance(m, dict) for m in messages):
        raise _BadRequest("each message must be a JSON object")
    return messages


def _chat_prompt(body: JSON) -> _Prompt:
    question, system, chars = "", [], 0
    for message in _messages(body):
        text = _content_text(message.get("content"))
        chars += len(text)
        if message.get("role") == "system":
            system.append(text)
        elif message.get("role") == "user":
            question = text
    return _Prompt(question, _count_numbered("\n".join(system)), chars)


def _completion_prompt(body: JSON) -> _Prompt:
    prompt = body.get("prompt")
    if isinstance(prompt, list) and all(isinstance(p, str) for p in prompt):
        prompt = "\n".join(prompt)
    if not isinstance(prompt, str):
        raise _BadRequest("'prompt' must be a string")
    return _Prompt(_last_question(prompt), _count_numbered(prompt), len(prompt))


def _messages_prompt(body: JSON) -> _Prompt:
    max_tokens = body.get("max_tokens")
    # Anthropic requires max_tokens, and a system prompt only in "system": being as strict
    # here catches a client that would fail against the real API.
    if not isinstance(max_tokens, int) or isinstance(max_tokens, bool) or max_tokens < 1:
        raise _BadRequest("'max_tokens' is required and must be a positive integer")
    system = _content_text(body.get("system"))
    question, chars = "", len(system)
    for message in _messages(body):
        if message.get("role") not in ("user", "assistant"):
            raise _BadRequest(f"unexpected role {message.get('role')!r}: use user or assistant")
        text = _content_text(message.get("content"))
        chars += len(text)
        if message["role"] == "user":
            question = text
    return _Prompt(question, _count_numbered(system), chars)


def _parse_fault(entry: Any) -> _Fault | None:
    """One script entry: ``"ok"`` (None), a fault kind, or ``kind:number``."""
    if not isinstance(entry, str):
        raise _BadRequest(f"fault {entry!r} must be a string")
    kind, colon, arg = entry.partition(":")
    if kind == "ok" and not colon:
        return None
    if kind not in FAULT_KINDS:
        raise _BadRequest(f"unknown fault {entry!r}; known: ok, {', '.join(FAULT_KINDS)}")
    if not colon:
        return _Fault(kind)
    if kind not in _ARG_KINDS:
        raise _BadRequest(f"fault {kind!r} takes no ':number'")
    try:
        value = float(arg)
    except ValueError:
        value = -1.0
    if not value >= 0:
        raise _BadRequest(f"fault {entry!r}: the number after ':' must be >= 0")
    return _Fault(kind, value)


def _script(body: JSON) -> list[_Fault | None]:
    faults = body.get("faults")
    if not isinstance(faults, list):
        raise _BadRequest("'faults' must be a list of strings such as 429:2, 500 or ok")
    return [_parse_fault(entry) for entry in faults]


def _offered_key(request: Request) -> str | None:
    scheme, _, token = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() == "bearer" and token.strip():
        return token.strip()
    return request.headers.get("x-api-key")


# --- building responses -----------------------------------------------------------------------


def _reply(model: str, seq: int, prompt: _Prompt) -> _Reply:
    # "same-" models answer a question the same way every time: agreeing proposers.
    tag = f"[sim model={model}]" if model.startswith("same-") else f"[sim model={model} seq={seq}]"
    text = f"{tag} answer to: {_clip(prompt.question)}"
    if prompt.answers_seen:
        text += f" (saw {prompt.answers_seen} numbered answers)"
    return _Reply(model, seq, text, max(1, prompt.chars // 4), max(1, len(text) // 4))


def _usage(reply: _Reply) -> JSON:
    return {
        "prompt_tokens": reply.prompt_tokens,
        "completion_tokens": reply.completion_tokens,
        "total_tokens": reply.prompt_tokens + reply.completion_tokens,
    }


def _words(text: str) -> list[str]:
    # Each piece keeps its surrounding spaces, so the pieces join back to the exact text.
    return _WORD.findall(text)


def _sse(payload: JSON, event: str | None = None) -> bytes:
    data = json.dumps(payload, separators=(",", ":"))
    return (f"event: {event}\n" if event else "").encode() + f"data: {data}\n\n".encode()


def _chat_body(reply: _Reply) -> JSON:
    return {
        "id": f"chatcmpl-sim-{reply.seq}",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": reply.model,
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": reply.text},
                "finish_reason": "stop",
            }
        ],
        "usage": _usage(reply),
    }


def _completion_body(reply: _Reply) -> JSON:
    return {
        "id": f"cmpl-sim-{reply.seq}",
        "object": "text_completion",
        "created": int(time.time()),
        "model": reply.model,
        "choices": [{"index": 0, "text": reply.text, "finish_reason": "stop", "logprobs": None}],
        "usage": _usage(reply),
    }


def _openai_chunker(reply: _Reply, obj: str, id_prefix: str) -> Callable[..., bytes]:
    envelope = {
        "id": f"{id_prefix}-sim-{reply.seq}",
        "object": obj,
        "created": int(time.time()),
        "model": reply.model,
    }

    def chunk(**fields: Any) -> bytes:
        return _sse({**envelope, **fields})

    return chunk


def _openai_tail(
    chunk: Callable[..., bytes], last: JSON, reply: _Reply, include_usage: bool
) -> list[bytes]:
    tail = [chunk(choices=[last])]
    if include_usage:
        tail.append(chunk(choices=[], usage=_usage(reply)))
    tail.append(b"data: [DONE]\n\n")
    return tail


def _chat_stream(reply: _Reply, include_usage: bool) -> _Stream:
    chunk = _openai_chunker(reply, "chat.completion.chunk", "chatcmpl")

    def choice(delta: JSON, finish: str | None = None) -> JSON:
        return {"index": 0, "delta": delta, "finish_reason": finish}

    return _Stream(
        # OpenAI opens a chat stream with the role and empty content.
        head=[chunk(choices=[choice({"role": "assistant", "content": ""})])],
        pieces=[chunk(choices=[choice({"content": w})]) for w in _words(reply.text)],
        tail=_openai_tail(chunk, choice({}, "stop"), reply, include_usage),
    )


def _completion_stream(reply: _Reply, include_usage: bool) -> _Stream:
    chunk = _openai_chunker(reply, "text_completion", "cmpl")

    def choice(text: str, finish: str | None = None) -> JSON:
        return {"index": 0, "text": text, "finish_reason": finish, "logprobs": None}

    return _Stream(
        head=[],
        pieces=[chunk(choices=[choice(w)]) for w in _words(reply.text)],
        tail=_openai_tail(chunk, choice("", "stop"), reply, include_usage),
    )


def _message(reply: _Reply, content: list[JSON], stop: str | None, output_tokens: int) -> JSON:
    return {
        "id": f"msg_sim_{reply.seq}",
        "type": "message",
        "role": "assistant",
        "model": reply.model,
        "content": content,
        "stop_reason": stop,
        "stop_sequence": None,
        "usage": {"input_tokens": reply.prompt_tokens, "output_tokens": output_tokens},
    }


def _messages_body(reply: _Reply) -> JSON:
    content = [{"type": "text", "text": reply.text}]
    return _message(reply, content, "end_turn", reply.completion_tokens)


def _anthropic_event(payload: JSON) -> bytes:
    return _sse(payload, event=payload["type"])


def _messages_stream(reply: _Reply, include_usage: bool) -> _Stream:
    # Anthropic's streams always carry usage (input tokens first, output tokens at the end),
    # so include_usage, an OpenAI option, changes nothing here.
    head: list[JSON] = [
        {"type": "message_start", "message": _message(reply, [], None, 1)},
        {"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}},
        {"type": "ping"},  # real streams send pings; clients must skip them
    ]
    pieces = [
        {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": w}}
        for w in _words(reply.text)
    ]
    tail: list[JSON] = [
        {"type": "content_block_stop", "index": 0},
        {
            "type": "message_delta",
            "delta": {"stop_reason": "end_turn", "stop_sequence": None},
            "usage": {"output_tokens": reply.completion_tokens},
        },
        {"type": "message_stop"},
    ]
    return _Stream(
        head=[_anthropic_event(e) for e in head],
        pieces=[_anthropic_event(e) for e in pieces],
        tail=[_anthropic_event(e) for e in tail],
    )


_OPENAI_ERRORS: dict[int, tuple[str, str | None]] = {
    400: ("invalid_request_error", None),
    401: ("invalid_request_error", "invalid_api_key"),
    429: ("requests", "rate_limit_exceeded"),
    500: ("server_error", None),
    503: ("server_error", "service_unavailable"),
}
_ANTHROPIC_ERRORS = {
    400: "invalid_request_error",
    401: "authentication_error",
    429: "rate_limit_error",
    500: "api_error",
    503: "overloaded_error",
}


def _openai_error(status: int, message: str, headers: Mapping[str, str] | None) -> Response:
    kind, code = _OPENAI_ERRORS[status]
    error = {"message": message, "type": kind, "param": None, "code": code}
    return JSONResponse({"error": error}, status, headers=headers)


def _anthropic_error(status: int, message: str, headers: Mapping[str, str] | None) -> Response:
    error = {"type": _ANTHROPIC_ERRORS[status], "message": message}
    return JSONResponse({"type": "error", "error": error}, status, headers=headers)


def _key_message(key: str | None, header: str) -> str:
    # Real providers echo (part of) a rejected key; echoing all of it makes a leak obvious.
    return f"Incorrect API key provided: {key}" if key else f"No API key provided in {header}"


@dataclass(frozen=True, slots=True)
class _Endpoint:
    path: str
    read: Callable[[JSON], _Prompt]
    render: Callable[[_Reply], JSON]
    stream: Callable[[_Reply, bool], _Stream]
    error: Callable[[int, str, Mapping[str, str] | None], Response]
    key_header: str
    garbage: bytes  # a malformed body: cut JSON
    garbage_event: bytes  # a malformed stream event


_OPENAI_GARBAGE = (b'{"choices": [', b"data: {not json\n\n")
_CHAT = _Endpoint(
    "/v1/chat/completions",
    _chat_prompt,
    _chat_body,
    _chat_stream,
    _openai_error,
    "Authorization",
    *_OPENAI_GARBAGE,
)
_COMPLETION = _Endpoint(
    "/v1/completions",
    _completion_prompt,
    _completion_body,
    _completion_stream,
    _openai_error,
    "Authorization",
    *_OPENAI_GARBAGE,
)
_MESSAGES = _Endpoint(
    "/v1/messages",
    _messages_prompt,
    _messages_body,
    _messages_stream,
    _anthropic_error,
    "x-api-key",
    b'{"type": "message", "content": [',
    b"event: content_block_delta\ndata: {not json\n\n",
)


# --- streaming and cutting connections --------------------------------------------------------


class _Cut(Exception):
    """Raised in a response body after its headers: uvicorn then drops the connection."""


class _QuietCuts(logging.Filter):
    """Keeps uvicorn from logging a traceback for each connection cut on purpose."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not (record.exc_info and isinstance(record.exc_info[1], _Cut))


_QUIET_CUTS = _QuietCuts()


class _Streamed(StreamingResponse):
    """A response sent piecewise; ``on_close`` runs once it has ended, complete or cut."""

    on_close: Callable[[], None] | None = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            # Also reached when Starlette cancels the body on a client disconnect, which a
            # finally inside the generator would not see if it never started.
            if self.on_close is not None:
                self.on_close()


async def _events(events: list[bytes], interval_s: float, cut: bool) -> AsyncIterator[bytes]:
    if interval_s > 0:
        for i, event in enumerate(events):
            if i:
                await asyncio.sleep(interval_s)
            yield event
    elif events:
        yield b"".join(events)
    if cut:
        raise _Cut("simulated disconnect")


def _plan(stream: _Stream, kind: str | None, garbage_event: bytes) -> tuple[list[bytes], bool]:
    """The events to send for a streamed answer under a fault, and whether to cut after them."""
    pieces = list(stream.pieces)
    if kind == "malformed":
        pieces.insert(1, garbage_event)
    if kind == "disconnect":
        return [*stream.head, *pieces[: max(1, len(pieces) // 2)]], True
    return [*stream.head, *pieces, *stream.tail], False


async def _client_left(receive: Receive, timeout_s: float) -> bool:
    """Waits until the client disconnects (True) or ``timeout_s`` passes (False)."""

    async def disconnected() -> None:
        # The body has been read, so the next message is the disconnect.
        while (await receive())["type"] != "http.disconnect":
            pass

    try:
        await asyncio.wait_for(disconnected(), timeout_s)
    except TimeoutError:
        return False
    return True


# --- the simulated provider -------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Call:
    request: Request
    endpoint: _Endpoint
    body: JSON
    model: str
    seq: int


class _Simulator:
    """Request log, counters, scripts and answers; touched only from the server's event loop."""

    def __init__(self, config: SimConfig) -> None:
        self.config = config
        self.rng = random.Random(config.seed)
        mix = {kind: w for kind, w in config.faults.items() if w > 0}
        self.fault_kinds, self.fault_weights = list(mix), list(mix.values())
        # In-flight counts outlive a reset: requests still running must decrement them.
        self.in_flight: dict[str, int] = {}
        self.reset()

    def reset(self) -> None:
        self.seq = 0
        self.log: list[JSON] = []
        self.by_model: dict[str, int] = {}
        self.in_flight = {m: n for m, n in self.in_flight.items() if n}
        self.peak: dict[str, int] = dict(self.in_flight)
        self.failures = 0
        self.fault_counts: dict[str, int] = {}
        self.scripts: dict[str, deque[_Fault | None]] = {}

    def record(self, path: str, model: str, body: JSON) -> int:
        self.seq += 1
        self.log.append({"seq": self.seq, "path": path, "model": model, "body": body})
        self.by_model[model] = self.by_model.get(model, 0) + 1
        return self.seq

    def enter(self, model: str) -> None:
        n = self.in_flight.get(model, 0) + 1
        self.in_flight[model] = n
        if n > self.peak.get(model, 0):
            self.peak[model] = n

    def leave(self, model: str) -> None:
        self.in_flight[model] -= 1

    def set_script(self, model: str, faults: list[_Fault | None]) -> None:
        if faults:
            self.scripts[model] = deque(faults)
        else:
            self.scripts.pop(model, None)

    def next_fault(self, model: str) -> _Fault | None:
        script = self.scripts.get(model)
        fault = script.popleft() if script else self.random_fault()
        if fault is not None:
            self.failures += 1
            self.fault_counts[fault.kind] = self.fault_counts.get(fault.kind, 0) + 1
        return fault

    def random_fault(self) -> _Fault | None:
        rate = self.config.fail_rate
        if not (rate > 0 and self.rng.random() < rate):
            return None
        if len(self.fault_kinds) == 1:
            # No second draw: seeded runs with one fault kind stay as they were before mixes.
            return _Fault(self.fault_kinds[0])
        return _Fault(self.rng.choices(self.fault_kinds, self.fault_weights)[0])

    def delay_s(self, completion_tokens: int) -> float:
        cfg = self.config
        ms = cfg.latency_ms
        if cfg.jitter_ms > 0:
            ms += self.rng.uniform(0.0, cfg.jitter_ms)
        seconds = ms / 1000.0
        if cfg.tokens_per_s > 0:
            seconds += completion_tokens / cfg.tokens_per_s
        return seconds

    async def handle(self, request: Request, endpoint: _Endpoint) -> Response:
        try:
            body = await _parse_body(request)
            prompt = endpoint.read(body)
        except _BadRequest as exc:
            return endpoint.error(400, str(exc), None)
        model: str = body["model"]
        seq = self.record(endpoint.path, model, body)
        self.enter(model)
        try:
            response = await self.respond(_Call(request, endpoint, body, model, seq), prompt)
        except BaseException:
            self.leave(model)
            raise
        if isinstance(response, _Streamed):
            # A stream is in flight until its last byte is sent or the connection is cut.
            response.on_close = lambda: self.leave(model)
        else:
            self.leave(model)
        return response

    async def respond(self, call: _Call, prompt: _Prompt) -> Response:
        if call.model.startswith(REJECT_KEY_PREFIX):
            key = _offered_key(call.request)
            return call.endpoint.error(401, _key_message(key, call.endpoint.key_header), None)
        fault = self.next_fault(call.model)
        kind = fault.kind if fault is not None else None
        if fault is not None and (stop := await self.instead(call, fault)) is not None:
            return stop
        reply = _reply(call.model, call.seq, prompt)
        if call.body.get("stream") is True:
            await self.pause(self.delay_s(0))
            return self.streamed(call, reply, kind)
        await self.pause(self.delay_s(reply.completion_tokens))
        if kind == "malformed":
            return Response(call.endpoint.garbage, media_type="application/json")
        if kind == "disconnect":
            return _Streamed(_events([], 0.0, cut=True), media_type="application/json")
        return JSONResponse(call.endpoint.render(reply))

    async def instead(self, call: _Call, fault: _Fault) -> Response | None:
        """Errors, and hangs the client gave up on, replace the answer; ``slow`` delays it."""
        cfg = self.config
        if fault.kind in _ERROR_STATUS:
            await self.pause(self.delay_s(0))
            return self.error(call, fault)
        if fault.kind == "hang":
            hang_s = cfg.hang_s if fault.arg is None else fault.arg
            if await _client_left(call.request.receive, hang_s):
                return Response(status_code=_CLIENT_GONE)
        elif fault.kind == "slow":
            wait_ms = cfg.slow_first_byte_ms if fault.arg is None else fault.arg
            await self.pause(wait_ms / 1000.0)
        return None

    def error(self, call: _Call, fault: _Fault) -> Response:
        status = _ERROR_STATUS[fault.kind]
        headers = None
        retry_after = self.config.retry_after_s if status == 429 else None
        if fault.arg is not None:
            retry_after = fault.arg
        if retry_after is not None:
            headers = {"Retry-After": f"{retry_after:g}"}
        message = f"simulated failure: {fault.kind} (seq={call.seq})"
        return call.endpoint.error(status, message, headers)

    def streamed(self, call: _Call, reply: _Reply, kind: str | None) -> Response:
        options = call.body.get("stream_options")
        include_usage = isinstance(options, dict) and options.get("include_usage") is True
        stream = call.endpoint.stream(reply, include_usage)
        events, cut = _plan(stream, kind, call.endpoint.garbage_event)
        tps = self.config.tokens_per_s
        headers = {"Cache-Control": "no-cache"}
        if tps <= 0 and not cut:
            # Unpaced and whole: one plain body reads the same to an SSE client and skips
            # Starlette's streaming machinery, which would more than halve the request rate.
            return Response(b"".join(events), media_type=_SSE, headers=headers)
        # Each event counts as about one token.
        body = _events(events, 1.0 / tps if tps > 0 else 0.0, cut)
        return _Streamed(body, media_type=_SSE, headers=headers)

    @staticmethod
    async def pause(seconds: float) -> None:
        # Skipping the zero sleep keeps the zero-latency path free of an extra loop turn.
        if seconds > 0:
            await asyncio.sleep(seconds)

    def models(self) -> JSON:
        names = dict.fromkeys([DEFAULT_MODEL, *self.by_model])
        return {"object": "list", "data": [_model_card(name) for name in names]}

    def requests(self, model: str | None) -> list[JSON]:
        if model is None:
            return self.log
        return [entry for entry in self.log if entry["model"] == model]

    def stats(self) -> JSON:
        return {
            "requests": self.seq,
            "by_model": self.by_model,
            "in_flight": self.in_flight,
            "peak_in_flight": self.peak,
            "failures_injected": self.failures,
            "faults": self.fault_counts,
        }


def _model_card(name: str) -> JSON:
    return {"id": name, "object": "model", "created": 0, "owned_by": "moa-sim"}


def build_app(config: SimConfig) -> Starlette:
    """The simulator as a Starlette app; each app has its own log, counters and scripts."""
    sim = _Simulator(config)
    logging.getLogger("uvicorn.error").addFilter(_QUIET_CUTS)

    def answer(endpoint: _Endpoint) -> Route:
        async def handler(request: Request) -> Response:
            return await sim.handle(request, endpoint)

        return Route(endpoint.path, handler, methods=["POST"])

    async def models(request: Request) -> JSONResponse:
        return JSONResponse(sim.models())

    async def requests(request: Request) -> JSONResponse:
        return JSONResponse(sim.requests(request.query_params.get("model")))

    async def stats(request: Request) -> JSONResponse:
        return JSONResponse(sim.stats())

    async def reset(request: Request) -> JSONResponse:
        sim.reset()
        return JSONResponse({"reset": True})

    async def script(request: Request) -> Response:
        try:
            body = await _parse_body(request)
            faults = _script(body)
        except _BadRequest as exc:
            return _openai_error(400, str(exc), None)
        sim.set_script(body["model"], faults)
        return JSONResponse({"model": body["model"], "queued": len(faults)})

    return Starlette(
        routes=[
            *(answer(endpoint) for endpoint in (_CHAT, _COMPLETION, _MESSAGES)),
            Route("/v1/models", models, methods=["GET"]),
            Route("/_sim/requests", requests, methods=["GET"]),
            Route("/_sim/stats", stats, methods=["GET"]),
            Route("/_sim/reset", reset, methods=["POST"]),
            Route("/_sim/script", script, methods=["POST"]),
        ]
    )


# --- serving ----------------------------------------------------------------------------------


def _uvicorn_config(app: Starlette, host: str, port: int, log_level: str) -> uvicorn.Config:
    # No websockets: the simulator never needs them, and importing them can warn.
    return uvicorn.Config(
        app,
        host=host,
        port=port,
        log_level=log_level,
        lifespan="off",
        access_log=False,
        ws="none",
    )


class _ThreadServer(uvicorn.Server):
    """A uvicorn server that signals a thread-safe event once it is listening."""

    def __init__(self, config: uvicorn.Config) -> None:
        super().__init__(config)
        self.ready = threading.Event()

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets=sockets)
        self.ready.set()


def _bind(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    # An explicit IPPROTO_TCP makes asyncio set TCP_NODELAY on accepted connections; without it
    # Nagle plus delayed ACKs cap each keep-alive connection at about 25 requests/s.
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
    except OSError:
        sock.close()
        raise
    return sock


class SimServer:
    """Runs the simulator with uvicorn in a background thread; for tests and benchmarks."""

    def __init__(
        self, config: SimConfig | None = None, host: str = "127.0.0.1", port: int = 0
    ) -> None:
        self.config = config if config is not None else SimConfig()
        self.host = host
        self.port = port
        self._server: _ThreadServer | None = None
        self._thread: threading.Thread | None = None
        self._sock: socket.socket | None = None

    @property
    def base_url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}/v1"

    def stats(self) -> dict[str, Any]:
        """Its counters, as ``GET /_sim/stats`` reports them."""
        response = httpx.get(f"{self.base_url.removesuffix('/v1')}/_sim/stats")
        response.raise_for_status()
        return dict(response.json())

    def script(self, model: str, faults: list[str]) -> None:
        """What the next requests for ``model`` meet (``POST /_sim/script``)."""
        body = {"model": model, "faults": faults}
        httpx.post(f"{self.base_url.removesuffix('/v1')}/_sim/script", json=body).raise_for_status()

    def start(self, timeout_s: float = 10.0) -> SimServer:
        if self._thread is not None:
            raise RuntimeError("simulator already started")
        # Binding here, not in uvicorn, is what tells us the port when port=0.
        self._sock = _bind(self.host, self.port)
        self.port = self._sock.getsockname()[1]
        server = _ThreadServer(
            _uvicorn_config(build_app(self.config), self.host, self.port, "warning")
        )
        self._server = server
        self._thread = threading.Thread(target=self._run, name=f"moa-sim-{self.port}", daemon=True)
        self._thread.start()
        if not server.ready.wait(timeout_s) or not server.started:
            self.stop()
            raise RuntimeError(f"simulator did not start on {self.host}:{self.port}")
        return self

    def _run(self) -> None:
        assert self._server is not None and self._sock is not None
        try:
            self._server.run(sockets=[self._sock])
        finally:
            # Unblocks start() even when uvicorn fails before listening.
            self._server.ready.set()

    def stop(self, timeout_s: float = 10.0) -> None:
        if self._server is not None:
            self._server.should_exit = True
        if self._thread is not None:
            self._thread.join(timeout_s)
        if self._sock is not None:
            self._sock.close()
        self._server, self._thread, self._sock = None, None, None

    def __enter__(self) -> SimServer:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


def serve(config: SimConfig, host: str, port: int) -> None:
    """Serve the simulator in the foreground until interrupted (``moa sim``)."""
    uvicorn.Server(_uvicorn_config(build_app(config), host, port, "info")).run()
