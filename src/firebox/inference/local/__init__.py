"""The in-process engines: models run inside the Firebox process itself.

Importing this package is cheap on purpose: torch and transformers load only
when an engine module is imported (``firebox.inference.local.embedding`` for
``SentenceEmbeddingEngine``, ``firebox.inference.local.text_engine`` for
``LocalTextEngine``), so the gateway, CLI and tests that do not run a local
model never pay for them.
"""
