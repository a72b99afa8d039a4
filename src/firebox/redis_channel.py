"""Listening on one Redis pub/sub channel from a thread, resubscribing after a failure.

Key revocations (``accounts/revocation.py``) and account changes
(``limits/changes.py``) both keep a subscription alive for the life of the
process and act on its loss; this is the loop they share.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable

import redis


def listen(
    client: redis.Redis,
    channel: str,
    deliver: Callable[[bytes], None],
    stop: threading.Event,
    *,
    on_subscribed: Callable[[], None],
    on_error: Callable[[redis.RedisError], None],
    retry_s: float = 0.5,
) -> None:
    """Deliver each message's data until ``stop`` is set (run it in its own thread).

    ``on_subscribed`` runs after every (re)subscription, ``on_error`` after
    each failure, before the ``retry_s`` pause and the next attempt.
    """
    while not stop.is_set():
        pubsub = client.pubsub(ignore_subscribe_messages=True)
        try:
            pubsub.subscribe(channel)
            on_subscribed()
            while not stop.is_set():
                message = pubsub.get_message(timeout=0.5)
                if message and message.get("type") == "message":
                    deliver(message["data"])
        except redis.RedisError as exc:
            on_error(exc)
            time.sleep(retry_s)
        finally:
            with contextlib.suppress(redis.RedisError):
                pubsub.close()
