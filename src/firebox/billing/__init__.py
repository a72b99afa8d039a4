"""Billing: price book, usage ledger, credits, payments, invoices, usage tiers (SPEC §2-§3)."""
