"""Simulated OpenAI-compatible LLM provider served over HTTP on loopback.

Used by tests, benchmarks and ``moa sim`` dry runs; its answers echo what each call was sent.
"""

from __future__ import annotations

import asyncio
import json
import random
import re
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from types import TracebackType
from typing import Any

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

JSON = dict[str, Any]

DEFAULT_MODEL = "sim"
QUESTION_CHARS = 60

_NUMBERED = re.compile(r"^[ \t]*\[(\d+)\]", re.MULTILINE)
_QUESTION = re.compile(r"^[ \t]*Question:", re.MULTILINE)


@dataclass
class SimConfig:
    latency_ms: float = 0.0
    jitter_ms: float = 0.0
    tokens_per_s: float = 0.0
    fail_rate: float = 0.0
    seed: int | None = None


class _BadRequest(Exception):
    pass


@dataclass(frozen=True, slots=True)
class _Prompt:
    question: str
    answers_seen: int
    chars: int


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
        # OpenAI's multi-part content: only the text parts carry prompt text.
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


def _chat_prompt(body: JSON) -> _Prompt:
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise _BadRequest("'messages' must be a non-empty list")
    question, system, chars = "", [], 0
    for message in messages:
        if not isinstance(message, dict):
            raise _BadRequest("each message must be a JSON object")
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


# --- building responses -----------------------------------------------------------------------


def _reply_text(model: str, seq: int, prompt: _Prompt) -> str:
    text = f"[sim model={model} seq={seq}] answer to: {_clip(prompt.question)}"
    if prompt.answers_seen:
        text += f" (saw {prompt.answers_seen} numbered answers)"
    return text


def _usage(prompt: _Prompt, text: str) -> JSON:
    prompt_tokens = max(1, prompt.chars // 4)
    completion_tokens = max(1, len(text) // 4)
    return {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
    }


def _chat_body(model: str, seq: int, text: str, usage: JSON) -> JSON:
    return {
        "id": f"chatcmpl-sim-{seq}",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": model,
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": text},
                "finish_reason": "stop",
            }
        ],
        "usage": usage,
    }


def _completion_body(model: str, seq: int, text: str, usage: JSON) -> JSON:
    return {
        "id": f"cmpl-sim-{seq}",
        "object": "text_completion",
        "created": int(time.time()),
        "model": model,
        "choices": [{"index": 0, "text": text, "finish_reason": "stop", "logprobs": None}],
        "usage": usage,
    }


def _error(status: int, message: str, kind: str) -> JSONResponse:
    return JSONResponse({"error": {"message": message, "type": kind, "code": None}}, status)


@dataclass(frozen=True, slots=True)
class _Endpoint:
    path: str
    read: Callable[[JSON], _Prompt]
    render: Callable[[str, int, str, JSON], JSON]


_CHAT = _Endpoint("/v1/chat/completions", _chat_prompt, _chat_body)
_COMPLETION = _Endpoint("/v1/completions", _completion_prompt, _completion_body)


# --- the simulated provider -------------------------------------------------------------------


class _Simulator:
    """Request log, counters and answers; touched only from the server's event loop."""

    def __init__(self, config: SimConfig) -> None:
        self.config = config
        self.rng = random.Random(config.seed)
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

    def should_fail(self) -> bool:
        rate = self.config.fail_rate
        return rate > 0 and self.rng.random() < rate

    def delay_s(self, completion_tokens: int) -> float:
        cfg = self.config
        ms = cfg.latency_ms
        if cfg.jitter_ms > 0:
            ms += self.rng.uniform(0.0, cfg.jitter_ms)
        seconds = ms / 1000.0
        if cfg.tokens_per_s > 0:
            seconds += completion_tokens / cfg.tokens_per_s
        return seconds

    async def handle(self, request: Request, endpoint: _Endpoint) -> JSONResponse:
        try:
            body = await _parse_body(request)
            prompt = endpoint.read(body)
        except _BadRequest as exc:
            return _error(400, str(exc), "invalid_request_error")
        model: str = body["model"]
        seq = self.record(endpoint.path, model, body)
        self.enter(model)
        try:
            return await self.answer(endpoint, model, seq, prompt)
        finally:
            self.leave(model)

    async def answer(
        self, endpoint: _Endpoint, model: str, seq: int, prompt: _Prompt
    ) -> JSONResponse:
        if self.should_fail():
            self.failures += 1
            await self.pause(self.delay_s(0))
            return _error(500, f"simulated failure (seq={seq})", "server_error")
        text = _reply_text(model, seq, prompt)
        usage = _usage(prompt, text)
        await self.pause(self.delay_s(usage["completion_tokens"]))
        return JSONResponse(endpoint.render(model, seq, text, usage))

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
        }


def _model_card(name: str) -> JSON:
    return {"id": name, "object": "model", "created": 0, "owned_by": "moa-sim"}


def build_app(config: SimConfig) -> Starlette:
    """The simulator as a Starlette app; each app has its own log and counters."""
    sim = _Simulator(config)

    async def chat(request: Request) -> JSONResponse:
        return await sim.handle(request, _CHAT)

    async def completions(request: Request) -> JSONResponse:
        return await sim.handle(request, _COMPLETION)

    async def models(request: Request) -> JSONResponse:
        return JSONResponse(sim.models())

    async def requests(request: Request) -> JSONResponse:
        return JSONResponse(sim.requests(request.query_params.get("model")))

    async def stats(request: Request) -> JSONResponse:
        return JSONResponse(sim.stats())

    async def reset(request: Request) -> JSONResponse:
        sim.reset()
        return JSONResponse({"reset": True})

    return Starlette(
        routes=[
            Route(_CHAT.path, chat, methods=["POST"]),
            Route(_COMPLETION.path, completions, methods=["POST"]),
            Route("/v1/models", models, methods=["GET"]),
            Route("/_sim/requests", requests, methods=["GET"]),
            Route("/_sim/stats", stats, methods=["GET"]),
            Route("/_sim/reset", reset, methods=["POST"]),
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
