"""A bounded load generator for OpenAI-compatible servers: N concurrent clients stream chat completions for a fixed
time and report throughput, time to first token and inter-token latency (used by the load test and
benchmarks/serve.py, against herd or any peer).

    python -m herd.serve.loadgen --url http://127.0.0.1:8000 --clients 16 --seconds 30

Each client sends one streaming request after another until the time is up; requests running then are finished
and counted, and throughput is all output tokens over the whole wall time, the tail included, so every number comes
from whole requests. Statuses other than 200 are counted by code.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import statistics
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import httpx

PROMPTS = (
    "Write a short paragraph about the sea.",
    "Explain what a hash table is.",
    "Give three tips for sleeping well.",
    "Describe a walk in a forest in autumn.",
    "What makes a good cup of tea?",
    "Summarize the plot of a detective story you invent.",
)


@dataclass
class LoadResult:
    clients: int
    seconds: float
    requests: int = 0
    output_tokens: int = 0
    statuses: Counter[int] = field(default_factory=Counter)
    ttft_s: list[float] = field(default_factory=list)
    itl_s: list[float] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)

    def summary(self) -> dict[str, Any]:
        def pct(xs: list[float], q: int) -> float | None:
            return statistics.quantiles(xs, n=100)[q - 1] if len(xs) >= 2 else (xs[0] if xs else None)

        return {
            "clients": self.clients,
            "seconds": round(self.seconds, 2),
            "requests": self.requests,
            "output_tokens": self.output_tokens,
            "output_tokens_per_s": self.output_tokens / self.seconds if self.seconds else 0.0,
            "ttft_p50_s": pct(self.ttft_s, 50),
            "ttft_p99_s": pct(self.ttft_s, 99),
            "itl_p50_s": pct(self.itl_s, 50),
            "itl_p99_s": pct(self.itl_s, 99),
            "statuses": {str(k): v for k, v in sorted(self.statuses.items())},
            "errors": self.errors[:5],
        }


async def _one(client: httpx.AsyncClient, url: str, body: dict[str, Any], result: LoadResult) -> None:
    start = time.perf_counter()
    stamps: list[float] = []
    usage: dict[str, int] | None = None
    async with client.stream("POST", url, json=body) as response:
        if response.status_code != 200:
            await response.aread()
            result.statuses[response.status_code] += 1
            if response.status_code != 429:
                result.errors.append(f"{response.status_code}: {response.text[:200]}")
            await asyncio.sleep(0.2)  # 429: back off a little, as Retry-After asks
            return
        async for line in response.aiter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            chunk = json.loads(line[6:])
            if "error" in chunk:
                result.errors.append(str(chunk["error"])[:200])
            elif any((c.get("delta") or {}).get("content") for c in chunk.get("choices", [])):
                stamps.append(time.perf_counter())
            if chunk.get("usage"):
                usage = chunk["usage"]
    result.statuses[200] += 1
    if not stamps:
        return
    result.requests += 1
    # The server's own count when it sends one (stream_options.include_usage), else one token per content chunk.
    result.output_tokens += usage["completion_tokens"] if usage else len(stamps)
    result.ttft_s.append(stamps[0] - start)
    result.itl_s += [b - a for a, b in itertools.pairwise(stamps)]


async def run_load(
    base_url: str,
    *,
    clients: int,
    seconds: float,
    max_tokens: int = 64,
    model: str | None = None,
    api_key: str | None = None,
) -> LoadResult:
    """`clients` concurrent streaming clients starting requests for `seconds`; returns when all have finished."""
    result = LoadResult(clients=clients, seconds=seconds)
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    url = f"{base_url.rstrip('/')}/v1/chat/completions"
    begin = time.perf_counter()
    end = begin + seconds

    async def client_loop(i: int, client: httpx.AsyncClient) -> None:
        n = 0
        while time.perf_counter() < end:
            prompt = PROMPTS[(i + n) % len(PROMPTS)]
            body = {"messages": [{"role": "user", "content": prompt}], "max_tokens": max_tokens, "stream": True,
                    "stream_options": {"include_usage": True}, "temperature": 0.7, "seed": i * 1000 + n,
                    **({"model": model} if model else {})}  # fmt: skip
            try:
                await _one(client, url, body, result)
            except httpx.HTTPError as e:
                result.errors.append(f"{type(e).__name__}: {e}")
            n += 1

    limits = httpx.Limits(max_connections=clients + 4)
    async with httpx.AsyncClient(headers=headers, timeout=httpx.Timeout(300.0), limits=limits) as client:
        await asyncio.gather(*(client_loop(i, client) for i in range(clients)))
    result.seconds = time.perf_counter() - begin
    return result


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--url", default="http://127.0.0.1:8000")
    p.add_argument("--clients", type=int, default=4)
    p.add_argument("--seconds", type=float, default=30)
    p.add_argument("--max-tokens", type=int, default=64)
    p.add_argument("--model", default=None)
    p.add_argument("--api-key", default=None)
    a = p.parse_args()
    result = asyncio.run(run_load(a.url, clients=a.clients, seconds=a.seconds, max_tokens=a.max_tokens,
                                  model=a.model, api_key=a.api_key))  # fmt: skip
    print(json.dumps(result.summary(), indent=2))


if __name__ == "__main__":
    main()
