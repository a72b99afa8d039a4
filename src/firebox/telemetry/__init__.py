"""Prometheus metrics and request telemetry."""
