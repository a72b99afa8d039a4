"""Usage in Prometheus: counts every usage record on its way to the real sink.

Gives operators (and the end-to-end tests, which see the server only from
outside) token and request counts per kind and outcome, whatever sink the
records go to.
"""

from __future__ import annotations

from firebox.inference.metering import UsageRecord, UsageSink
from firebox.telemetry.metrics import Metrics


class CountingUsageSink:
    """Counts records and tokens, then hands each record to ``inner``."""

    def __init__(self, inner: UsageSink, metrics: Metrics) -> None:
        self._inner = inner
        self._metrics = metrics

    def record(self, usage: UsageRecord) -> None:
        m = self._metrics
        m.usage_records.labels(usage.kind, usage.outcome).inc()
        m.tokens.labels(usage.kind, "prompt").inc(usage.prompt_tokens)
        m.tokens.labels(usage.kind, "completion").inc(usage.completion_tokens)
        m.tokens.labels(usage.kind, "cached_prompt").inc(usage.cached_prompt_tokens)
        self._inner.record(usage)
