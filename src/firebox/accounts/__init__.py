"""Accounts, users, roles and API keys: who may call Firebox, and as whom."""
