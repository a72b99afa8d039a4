"""One module per noun (and one for the server); each exposes ``register``."""
