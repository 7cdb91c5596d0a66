"""Fake model servers on 127.0.0.1 that speak the real wire formats, for tests and benchmarks.

One `FakeModelServer` answers OpenAI Chat Completions (`POST /v1/chat/completions`), the
OpenAI Responses API (`POST /v1/responses`) and Anthropic Messages (`POST /v1/messages`),
each in its own JSON shape, plus `GET /v1/models` and `GET /api/tags` (Ollama) for
reachability checks. Replies come from a script (texts or `Reply` objects), then from
`default_text`. Every request is recorded with its headers and JSON body.

    with FakeModelServer(["int f(void) { return 1; }"]) as srv:
        model = f"openai-compatible:fake@{srv.openai_base_url}"
"""

from __future__ import annotations

import json
import sys
import threading
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


@dataclass
class Reply:
    """One scripted answer. `text` is rendered in the endpoint's own format; `body`
    (bytes/str/dict) replaces the whole body; `hang` blocks until the server closes;
    `delay` (seconds) answers that much later (a model that thinks; None: the server's)."""

    text: str | None = None
    status: int = 200
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes | str | dict[str, Any] | None = None
    usage: dict[str, Any] | None = None
    hang: bool = False
    error_message: str = "scripted error"
    delay: float | None = None


@dataclass
class Recorded:
    method: str
    path: str
    headers: dict[str, str]
    body: Any


def chat_completion(text: str, model: str, usage: dict[str, Any] | None = None) -> dict[str, Any]:
    usage = usage or {"prompt_tokens": 100, "completion_tokens": 20, "cached_tokens": 0}
    return {
        "id": "chatcmpl-fake",
        "object": "chat.completion",
        "created": 1_700_000_000,
        "model": model,
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": text, "refusal": None},
                "logprobs": None,
                "finish_reason": "stop",
            }
        ],
        "usage": {
            "prompt_tokens": usage["prompt_tokens"],
            "completion_tokens": usage["completion_tokens"],
            "total_tokens": usage["prompt_tokens"] + usage["completion_tokens"],
            "prompt_tokens_details": {"cached_tokens": usage.get("cached_tokens", 0)},
            "completion_tokens_details": {"reasoning_tokens": usage.get("reasoning_tokens", 0)},
        },
    }


def responses_body(text: str, model: str, usage: dict[str, Any] | None = None) -> dict[str, Any]:
    usage = usage or {
        "input_tokens": 100,
        "cached_tokens": 0,
        "output_tokens": 60,
        "reasoning_tokens": 40,
    }
    return {
        "id": "resp_fake",
        "object": "response",
        "created_at": 1_700_000_000,
        "status": "completed",
        "model": model,
        "output": [
            {"id": "rs_fake", "type": "reasoning", "summary": []},
            {
                "id": "msg_fake",
                "type": "message",
                "status": "completed",
                "role": "assistant",
                "content": [{"type": "output_text", "text": text, "annotations": []}],
            },
        ],
        "incomplete_details": None,
        "usage": {
            "input_tokens": usage["input_tokens"],
            "input_tokens_details": {"cached_tokens": usage.get("cached_tokens", 0)},
            "output_tokens": usage["output_tokens"],
            "output_tokens_details": {"reasoning_tokens": usage.get("reasoning_tokens", 0)},
            "total_tokens": usage["input_tokens"] + usage["output_tokens"],
        },
    }


def anthropic_message(text: str, model: str, usage: dict[str, Any] | None = None) -> dict[str, Any]:
    usage = usage or {
        "input_tokens": 50,
        "cache_creation_input_tokens": 0,
        "cache_read_input_tokens": 0,
        "output_tokens": 20,
    }
    return {
        "id": "msg_fake",
        "type": "message",
        "role": "assistant",
        "model": model,
        "content": [{"type": "text", "text": text}],
        "stop_reason": "end_turn",
        "stop_sequence": None,
        "usage": usage,
    }


_ANTHROPIC_ERROR_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    429: "rate_limit_error",
    529: "overloaded_error",
}


class _QuietServer(ThreadingHTTPServer):
    """A client that hangs up (a killed loop) is no error worth a traceback."""

    def handle_error(self, request: Any, client_address: Any) -> None:
        if not isinstance(sys.exc_info()[1], ConnectionError):
            super().handle_error(request, client_address)


class FakeModelServer:
    """A scripted model server; use as a context manager. Thread-safe enough for tests."""

    def __init__(self, replies: Iterable[str | Reply] = (), default_text: str | None = "",
                 delay: float = 0.0) -> None:
        self.script: deque[str | Reply] = deque(replies)
        self.default_text = default_text
        self.delay = delay  # seconds each reply takes, unless the Reply says otherwise
        self.in_flight = 0  # POSTs being answered right now
        self.peak_in_flight = 0  # the most at once (did K requests really overlap?)
        self.requests: list[Recorded] = []
        self.release = threading.Event()
        self.posted = threading.Event()  # set by the first POST (a test waits on it)
        self._lock = threading.Lock()
        self._server = _QuietServer(("127.0.0.1", 0), self._handler_class())
        self._server.daemon_threads = True
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True
        )

    # -- lifecycle ------------------------------------------------------------------
    def __enter__(self) -> FakeModelServer:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self.release.set()
        self._server.shutdown()
        self._server.server_close()

    @property
    def port(self) -> int:
        return int(self._server.server_address[1])

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def openai_base_url(self) -> str:
        return self.base_url + "/v1"

    @property
    def anthropic_base_url(self) -> str:
        return self.base_url  # the anthropic SDK appends /v1/messages itself

    def push(self, *replies: str | Reply) -> None:
        with self._lock:
            self.script.extend(replies)

    def posts(self) -> list[Recorded]:
        return [r for r in self.requests if r.method == "POST"]

    # -- behaviour ------------------------------------------------------------------
    def _next(self) -> Reply:
        with self._lock:
            item = self.script.popleft() if self.script else None
        if item is None:
            if self.default_text is None:
                return Reply(status=500, error_message="fake server script exhausted")
            return Reply(text=self.default_text)
        return Reply(text=item) if isinstance(item, str) else item

    def _render(self, path: str, request: Any, reply: Reply) -> tuple[int, dict[str, str], bytes]:
        headers = {"content-type": "application/json", **reply.headers}
        if reply.body is not None:
            body = reply.body
            if isinstance(body, dict):
                body = json.dumps(body)
            return reply.status, headers, body.encode() if isinstance(body, str) else body
        model = request.get("model", "fake") if isinstance(request, dict) else "fake"
        anthropic = path.endswith("/messages")
        if reply.status >= 400:
            if anthropic:
                kind = _ANTHROPIC_ERROR_TYPES.get(reply.status, "api_error")
                err: dict[str, Any] = {
                    "type": "error",
                    "error": {"type": kind, "message": reply.error_message},
                }
            else:
                err = {
                    "error": {
                        "message": reply.error_message,
                        "type": "invalid_request_error" if reply.status < 500 else "server_error",
                        "param": None,
                        "code": None,
                    }
                }
            return reply.status, headers, json.dumps(err).encode()
        text = reply.text or ""
        if anthropic:
            data = anthropic_message(text, model, reply.usage)
        elif path.endswith("/responses"):
            data = responses_body(text, model, reply.usage)
        else:
            data = chat_completion(text, model, reply.usage)
        return reply.status, headers, json.dumps(data).encode()

    def _handler_class(self) -> type[BaseHTTPRequestHandler]:
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"  # keep-alive, like real APIs
            disable_nagle_algorithm = True  # else delayed ACKs add ~40 ms per reply

            def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
                return None

            def _send(self, status: int, headers: dict[str, str], body: bytes) -> None:
                try:
                    self.send_response(status)
                    for key, value in headers.items():
                        self.send_header(key, value)
                    self.send_header("content-length", str(len(body)))
                    self.end_headers()
                    self.wfile.write(body)
                except (BrokenPipeError, ConnectionResetError):
                    pass

            def do_GET(self) -> None:  # noqa: N802
                server.requests.append(Recorded("GET", self.path, dict(self.headers), None))
                if self.path.startswith("/api/tags"):
                    body = {"models": [{"name": "fake:latest"}]}
                else:
                    body = {"object": "list", "data": [{"id": "fake", "object": "model"}]}
                self._send(200, {"content-type": "application/json"}, json.dumps(body).encode())

            def do_POST(self) -> None:  # noqa: N802
                length = int(self.headers.get("content-length") or 0)
                raw = self.rfile.read(length)
                try:
                    request = json.loads(raw)
                except json.JSONDecodeError:
                    request = raw.decode(errors="replace")
                server.requests.append(Recorded("POST", self.path, dict(self.headers), request))
                server.posted.set()
                reply = server._next()
                if reply.hang:
                    server.release.wait(30)
                    return
                delay = server.delay if reply.delay is None else reply.delay
                with server._lock:
                    server.in_flight += 1
                    server.peak_in_flight = max(server.peak_in_flight, server.in_flight)
                try:
                    if delay > 0:
                        server.release.wait(delay)  # thinking; cut short by close()
                    self._send(*server._render(self.path, request, reply))
                finally:
                    with server._lock:
                        server.in_flight -= 1

        return Handler
