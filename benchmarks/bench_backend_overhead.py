"""Per-request overhead of each SDK backend: median ms per propose() against a local fake.

The fake server (tests/fakeservers.py) answers instantly in each real wire format, so the
time measured is ours plus the SDK's: building the request, HTTP on loopback, parsing,
usage and cost. A bare `http.client` POST of the same body is the floor. Each backend's
first call (connection set-up, lazy imports, price table load) is reported separately.

    .venv/bin/python benchmarks/bench_backend_overhead.py [--calls 200] [--prompt-kb 8]
"""

from __future__ import annotations

import argparse
import http.client
import json
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from urllib.parse import urlsplit

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from fakeservers import FakeModelServer  # noqa: E402

from ratchetloop.proposers.anthropic import AnthropicProposer  # noqa: E402
from ratchetloop.proposers.base import CACHE_BREAK  # noqa: E402
from ratchetloop.proposers.openai import OpenAIProposer  # noqa: E402

REPLY = "```c\nvoid linear(float *y, const float *x, int n) { for (int i = 0; i < n; i++) y[i] = x[i]; }\n```\nNote: copy"  # noqa: E501


def time_calls(fn: Callable[[], object], calls: int) -> tuple[float, float, list[float]]:
    """(first call ms, median ms of the rest, all later samples)."""
    start = time.perf_counter()
    fn()
    first = (time.perf_counter() - start) * 1000
    samples = []
    for _ in range(calls):
        start = time.perf_counter()
        fn()
        samples.append((time.perf_counter() - start) * 1000)
    return first, statistics.median(samples), samples


def bare_post(base_url: str, path: str, body: dict) -> Callable[[], object]:
    parts = urlsplit(base_url)
    conn = http.client.HTTPConnection(parts.hostname, parts.port)
    payload = json.dumps(body).encode()

    def call() -> object:
        conn.request("POST", path, payload, {"content-type": "application/json"})
        return json.loads(conn.getresponse().read())

    return call


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--calls", type=int, default=200)
    ap.add_argument(
        "--prompt-kb", type=float, default=8.0, help="prompt size (the loop's are 4-20 KB)"
    )
    args = ap.parse_args()
    stable = "# Experiment\n" + "x" * int(args.prompt_kb * 1024 * 0.7)
    prompt = f"{stable}\n{CACHE_BREAK}\n" + "y" * int(args.prompt_kb * 1024 * 0.3)

    rows = []
    with FakeModelServer(default_text=REPLY) as srv:
        key = "sk-bench"
        backends: list[tuple[str, Callable[[], object]]] = [
            (
                "bare http.client (floor)",
                bare_post(
                    srv.base_url,
                    "/v1/chat/completions",
                    {"model": "m", "messages": [{"role": "user", "content": prompt}]},
                ),
            ),
        ]
        chat = OpenAIProposer("gpt-4.1-mini", api_key=key, base_url=srv.openai_base_url)
        resp = OpenAIProposer("gpt-5", api_key=key, base_url=srv.openai_base_url)
        local = OpenAIProposer(
            "qwen", base_url=srv.openai_base_url, local=True, key_var=None, name="ollama:qwen"
        )
        claude = AnthropicProposer(
            "claude-sonnet-4-6", api_key=key, base_url=srv.anthropic_base_url
        )
        backends += [
            ("openai chat.completions", lambda: chat.propose(prompt)),
            ("openai responses", lambda: resp.propose(prompt)),
            ("openai-compatible (local, cost 0)", lambda: local.propose(prompt)),
            ("anthropic messages (cached)", lambda: claude.propose(prompt)),
        ]
        for name, fn in backends:
            first, median, samples = time_calls(fn, args.calls)
            p90 = sorted(samples)[int(0.9 * len(samples)) - 1]
            rows.append((name, first, median, p90))

    floor = rows[0][2]
    print(f"{args.calls} calls each, prompt {args.prompt_kb:g} KB, fake server on 127.0.0.1")
    print(f"{'backend':36} {'first ms':>9} {'median ms':>10} {'p90 ms':>8} {'over floor':>11}")
    for name, first, median, p90 in rows:
        print(f"{name:36} {first:9.2f} {median:10.2f} {p90:8.2f} {median - floor:+11.2f}")


if __name__ == "__main__":
    main()
