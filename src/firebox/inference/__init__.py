"""Inference: OpenAI-compatible routes, the engine protocol and the router to engines."""
