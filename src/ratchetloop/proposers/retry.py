"""One retry policy for every network backend (the SDKs' own retries are switched off).

Transient trouble (429, 5xx, connection errors, timeouts) is retried with exponential
backoff and full jitter, honouring a server's Retry-After; after `max_attempts` the
proposal becomes a recorded failure (`ProposalFailed`), never a crash. `sleep` and `rng`
are injectable so tests assert the waits without waiting.
"""

from __future__ import annotations

import email.utils
import random
import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from types import ModuleType
from typing import Any, TypeVar

from ..errors import ProposerError
from .base import ProposalFailed


def notify_stderr(message: str) -> None:
    """The backends' default notice channel (retries, a dropped temperature)."""
    print(message, file=sys.stderr)

T = TypeVar("T")


class Transient(Exception):
    """Raised by a backend's single attempt when trying again may help."""

    def __init__(self, kind: str, message: str, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.kind = kind
        self.message = message
        self.retry_after = retry_after


def parse_retry_after(headers: Mapping[str, str] | None, now: float | None = None) -> float | None:
    """Seconds to wait from `retry-after-ms`, `Retry-After` (seconds or HTTP date), or None."""
    if not headers:
        return None
    ms = headers.get("retry-after-ms")
    if ms:
        try:
            return max(0.0, float(ms) / 1000.0)
        except ValueError:
            pass
    value = headers.get("retry-after")
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - (time.time() if now is None else now))


@dataclass
class RetryPolicy:
    """Bounded exponential backoff: attempt n waits uniform(0, min(cap, base * 2**n))."""

    max_attempts: int = 5
    base_delay: float = 1.0
    max_delay: float = 30.0
    max_retry_after: float = 120.0  # a server asking for longer than this is not waited on
    sleep: Callable[[float], None] = time.sleep
    rng: random.Random = field(default_factory=random.Random)
    waits: list[float] = field(default_factory=list)  # every wait taken, for tests and logs

    def delay(self, attempt: int, retry_after: float | None) -> float:
        if retry_after is not None:
            return min(retry_after, self.max_retry_after)
        return self.rng.uniform(0.0, min(self.max_delay, self.base_delay * (2**attempt)))

    def run(self, attempt_fn: Callable[[], T]) -> T:
        """Call `attempt_fn` until it returns, retrying on `Transient`; then ProposalFailed."""
        last: Transient | None = None
        attempts = 0
        for attempt in range(self.max_attempts):
            attempts += 1
            try:
                return attempt_fn()
            except Transient as exc:
                last = exc
                if attempt + 1 >= self.max_attempts:
                    break
                if exc.retry_after is not None and exc.retry_after > self.max_retry_after:
                    break  # e.g. a daily quota: waiting is not a plan
                wait = self.delay(attempt, exc.retry_after)
                self.waits.append(wait)
                self.sleep(wait)
        assert last is not None
        raise ProposalFailed(
            f"{last.message} (gave up after {attempts} attempt{'s' * (attempts > 1)})", last.kind
        )


def server_message(exc: Exception) -> str:
    """The human part of an SDK status error's body (both Stainless SDKs), else its text."""
    body = getattr(exc, "body", None)
    if isinstance(body, Mapping):
        inner = body.get("error", body)
        if isinstance(inner, Mapping) and isinstance(inner.get("message"), str):
            return inner["message"]
    return str(getattr(exc, "message", exc))


def about_temperature(exc: Exception) -> bool:
    """A 400 that says the model does not take a temperature (OpenAI sets param)."""
    if getattr(exc, "param", None) == "temperature":
        return True
    text = server_message(exc).lower()
    return "temperature" in text and ("support" in text or "unsupported" in text)


def call_sdk(proposer: Any, sdk: ModuleType, create: Callable[..., Any],
             kwargs: dict[str, Any], body: dict[str, Any], key_var: str | None) -> str:
    """One attempt through an official SDK (openai and anthropic share their error types):
    timeouts and connection errors are Transient, statuses go through raise_for_status,
    a 400 about temperature is let through for send_dropping_temperature. Returns the raw
    body text with the key blanked out, in case a server echoes it. Each attempt (retries
    too) is first held to the proposer's budget; one that timed out may have been billed,
    so its estimate stays counted."""
    budget = getattr(proposer, "budget", None)
    estimate = None
    if budget is not None and budget.limited:
        estimate = proposer.estimate(body)
        budget.check(estimate, proposer.name)
    try:
        raw = create(**kwargs)
    except sdk.APITimeoutError:  # a subclass of APIConnectionError: keep it first
        if budget is not None and estimate is not None:
            budget.hold(estimate)
        raise Transient("timeout",
                        f"{proposer.name}: no reply within {proposer.timeout:g}s") from None
    except sdk.APIConnectionError as exc:
        cause = f" ({one_line(str(exc.__cause__), limit=80)})" if exc.__cause__ else ""
        raise Transient("connection_error", f"{proposer.name}: cannot connect to"
                        f" {proposer.client.base_url}{cause}") from None
    except sdk.APIStatusError as exc:
        if exc.status_code == 400 and "temperature" in body and about_temperature(exc):
            raise
        raise_for_status(exc.status_code, exc.response.headers, server_message(exc),
                         backend=proposer.name, model=proposer.model, key_var=key_var,
                         secrets=(proposer._key,))
        raise  # pragma: no cover - raise_for_status always raises
    text = raw.http_response.text
    return text.replace(proposer._key, "***") if proposer._key else text


def send_dropping_temperature(proposer: Any, body: dict[str, Any],
                              send: Callable[[dict[str, Any]], str],
                              bad_request: type[Exception]) -> str:
    """Send `body` under the retry policy. `send` lets through only a 400 about temperature:
    then say so, drop it for this and later calls, and send once more. Any other refusal
    stops the run with one line; a failure after retries is recorded with its request,
    except that a server never reached (connection refused, name not resolved) stops the
    run too: every later request would fail the same way."""
    key = (getattr(proposer, "_key", None),)
    try:
        try:
            text = proposer.retry.run(lambda: send(body))
        except bad_request:
            proposer.notify(f"{proposer.name}: model does not accept temperature;"
                            " retrying without it")
            proposer.temperature = None
            body.pop("temperature", None)
            text = proposer.retry.run(lambda: send(body))
    except bad_request as exc:
        raise ProposerError(f"{proposer.name} refused the request (400): "
                            f"{one_line(server_message(exc), key)}") from None
    except ProposalFailed as exc:
        if exc.kind == "connection_error" and not getattr(proposer, "reached", False):
            raise ProposerError(f"{exc}: nothing answers there; start the server or fix the"
                                " URL (the run stops instead of recording failures)") from None
        exc.request = body
        raise
    proposer.reached = True  # from now on a lost connection is one recorded failure
    return text


def one_line(text: str, secrets: tuple[str | None, ...] = (), limit: int = 240) -> str:
    """Collapse a server message to one short line with every secret blanked out."""
    for secret in secrets:
        if secret:
            text = text.replace(secret, "***")
    text = " ".join(str(text).split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


def raise_for_status(
    status: int,
    headers: Mapping[str, str] | None,
    server_message: str,
    *,
    backend: str,
    model: str,
    key_var: str | None,
    secrets: tuple[str | None, ...] = (),
) -> None:
    """Map an HTTP error status to the policy: Transient (retry), ProposerError (stop the
    run with one line) or ProposalFailed (record and go on). Never echoes a key."""
    from ..errors import ProposerError

    if status in (408, 409, 429) or status >= 500:
        detail = "rate limited" if status == 429 else f"server error {status}"
        raise Transient(f"http_{status}", f"{backend}: {detail}", parse_retry_after(headers))
    key_hint = f" in {key_var}" if key_var else ""
    if status == 401:
        # Real 401 bodies quote part of the key, so the server's message is not repeated.
        raise ProposerError(f"{backend} rejected the API key{key_hint} (401): check the key")
    if status == 403:
        raise ProposerError(f"{backend}: the API key{key_hint} has no access to {model!r} (403)")
    if status == 404:
        raise ProposerError(
            f"{backend}: unknown model {model!r} or wrong base URL (404); see `ratchet models`"
        )
    message = one_line(server_message, secrets)
    if status in (400, 422):
        raise ProposerError(f"{backend} refused the request ({status}): {message}")
    raise ProposalFailed(f"{backend}: HTTP {status}: {message}", f"http_{status}")
