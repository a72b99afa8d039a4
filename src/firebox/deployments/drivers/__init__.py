"""Drivers run deployment replicas: ``local`` (in-process) and ``ray_serve`` (Serve REST API)."""
