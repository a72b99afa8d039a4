"""Prometheus metrics of one app instance.

Each app owns its registry (no module-level global), so several apps in one
test process do not share or clash on counters.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest


class Metrics:
    """The metrics a gateway replica exports on ``/metrics``."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "firebox_http_requests",
            "HTTP requests answered, by method, route template and status.",
            ["method", "route", "status"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "firebox_http_request_duration_seconds",
            "Time from request start to the last byte of the answer.",
            ["method", "route"],
            buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 10),
            registry=self.registry,
        )
        self.in_flight = Gauge(
            "firebox_http_requests_in_flight",
            "Requests being served now.",
            registry=self.registry,
        )
        self.key_cache_entries = Gauge(
            "firebox_api_key_cache_entries",
            "API keys resolved and held in this replica's memory.",
            registry=self.registry,
        )
        self.revocation_channel_errors = Counter(
            "firebox_key_revocation_channel_errors",
            "Times the cross-replica key revocation channel (Redis) was lost.",
            registry=self.registry,
        )

        self.usage_records = Counter(
            "firebox_usage_records",
            "Usage records emitted (one per admitted inference request), by kind and outcome.",
            ["kind", "outcome"],
            registry=self.registry,
        )
        self.tokens = Counter(
            "firebox_tokens",
            "Tokens metered, by request kind and token type.",
            ["kind", "type"],
            registry=self.registry,
        )

        self.admissions = Counter(
            "firebox_admissions",
            "Inference admission decisions, by outcome (admitted, rate_limited, "
            "suspended, spend_limited, ...).",
            ["outcome"],
            registry=self.registry,
        )
        self._admission_children: dict[str, Counter] = {}
        self.admission_duration = Histogram(
            "firebox_admission_duration_seconds",
            "Time admission took per inference request (suspension, rate and spend checks; "
            "with Redis, its one round trip), whatever the outcome.",
            buckets=(0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.05, 0.25),
            registry=self.registry,
        )
        self.limits_redis_fallbacks = Counter(
            "firebox_limits_redis_fallbacks",
            "Rate-limit checks answered from this replica's share because Redis was unreachable.",
            registry=self.registry,
        )
        self.ledger_queue_depth = Gauge(
            "firebox_ledger_queue_depth",
            "Usage records waiting to be written to the ledger.",
            registry=self.registry,
        )
        self.ledger_records_written = Gauge(
            "firebox_ledger_records_written",
            "Usage records this replica wrote to the ledger since it started.",
            registry=self.registry,
        )

    def admission(self, outcome: str) -> None:
        """Count one admission decision (children cached: this is the hot path)."""
        child = self._admission_children.get(outcome)
        if child is None:
            child = self.admissions.labels(outcome)
            self._admission_children[outcome] = child
        child.inc()

    def admission_time(self, seconds: float) -> None:
        self.admission_duration.observe(seconds)

    def render(self) -> bytes:
        return generate_latest(self.registry)
