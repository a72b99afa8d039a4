"""Enforcement: rate limits, spend reservations, suspension, quotas (SPEC §3-§5)."""
