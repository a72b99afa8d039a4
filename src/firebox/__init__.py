"""Firebox: a self-hostable LLM inference platform with its commercial control plane."""

__version__ = "0.1.0"
