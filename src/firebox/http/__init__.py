"""Shared HTTP plumbing: auth dependency, error rendering, middleware, health."""
