"""The training worker process: no HTTP, no SQL; it talks to the runner over stdin/stdout."""
