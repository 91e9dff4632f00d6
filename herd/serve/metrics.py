"""Prometheus metrics of the server (prometheus-client, in the text exposition format at /metrics).

Counters of requests and tokens, gauges of the scheduler's queue and running batch, and histograms of the time to
first token and of each request's generation speed. The registry belongs to the app, so several apps in one process
(tests) keep separate numbers.
"""

from __future__ import annotations

import time

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from herd.inference.scheduler import Request, Scheduler

_LATENCY_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)
_SPEED_BUCKETS = (1, 2, 5, 10, 20, 50, 100, 200, 500, 1000)


class Metrics:
    def __init__(self, scheduler: Scheduler) -> None:
        self.registry = r = CollectorRegistry()
        self.requests = Counter("herd_requests", "API requests accepted", ["endpoint"], registry=r)
        self.prompt_tokens = Counter("herd_prompt_tokens", "Prompt tokens prefilled", registry=r)
        self.generated_tokens = Counter("herd_generation_tokens", "Tokens generated", registry=r)
        self.ttft = Histogram("herd_time_to_first_token_seconds", "Submission to first token", registry=r,
                              buckets=_LATENCY_BUCKETS)  # fmt: skip
        self.speed = Histogram("herd_request_tokens_per_second", "Tokens per second of each finished request",
                               registry=r, buckets=_SPEED_BUCKETS)  # fmt: skip
        Gauge("herd_queue_depth", "Requests waiting for a batch row", registry=r).set_function(lambda: scheduler.queued)
        Gauge("herd_running_requests", "Requests in the running batch", registry=r).set_function(
            lambda: scheduler.running
        )
        scheduler.on_event = self._on_event

    def request(self, endpoint: str) -> None:
        self.requests.labels(endpoint).inc()

    def _on_event(self, request: Request, first: bool, finished: bool) -> None:
        """Called on the scheduler thread for every generated token."""
        self.generated_tokens.inc()
        if first:
            self.prompt_tokens.inc(len(request.prompt))
            if request.first_token_s is not None:
                self.ttft.observe(request.first_token_s)
        if finished and request.first_token_s is not None:
            elapsed = time.monotonic() - request.submitted - request.first_token_s
            if elapsed > 0 and request.tokens > 1:
                self.speed.observe((request.tokens - 1) / elapsed)

    def render(self) -> tuple[bytes, str]:
        return generate_latest(self.registry), CONTENT_TYPE_LATEST
