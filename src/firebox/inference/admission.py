"""The admission seam: what serving asks before a request runs, and tells after.

Serving describes a request's worst case as a ``Demand`` and asks the
``Admission`` for a ``Ticket`` before any engine work; a refusal is an error
from ``errors.py`` (429 rate limited, 402 suspended or over the spend limit).
When the request ends — however it ends — serving calls ``Ticket.settle``
once, with the request's usage record (or ``None`` when nothing was used), so
the reservation is settled to the actual cost or released. A ticket whose
``completion_cap`` is set was admitted with less room than the worst case:
serving passes that cap to the engine as ``max_tokens`` (so the choice ends
with ``finish_reason: "length"``) and the request can cost no more than held. The ``limits``
slice implements this protocol; ``OpenAdmission`` admits everything (tests of
serving alone, and engines behind no limits).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal, Protocol

from firebox.accounts.principal import Principal
from firebox.inference.metering import UsageRecord

# "batch": a request of a batch inference job; priced at the batch share, never rate-limited.
DemandKind = Literal["chat", "completion", "embedding", "image", "batch"]


@dataclass(frozen=True, slots=True)
class Demand:
    """The most a request can use, known before it runs.

    ``prompt_tokens`` is an upper bound (UTF-8 bytes of the text plus a
    per-message allowance, or the count of token ids); ``completion_tokens``
    is ``choices`` x the per-choice bound: ``max_tokens``, or the model's
    default completion bound when absent (``demand.completion_bound``).
    ``choices`` is how many sequences are generated (prompts x ``n``); 0 for
    a request that generates nothing (embeddings).
    ``images`` count 576 prompt tokens each when priced (SPEC §2).
    """

    request_id: str
    account_id: str
    kind: DemandKind
    model: str  # full catalog name of the model called
    billing_model: str  # the model whose price applies (an add-on's base)
    price_class: str | None  # SPEC §2 row of the billing model, if it fits one
    explicit_price_micros: int | None  # catalog price per unit, for models outside buckets
    prompt_tokens: int
    completion_tokens: int
    images: int = 0
    deployment: str | None = None  # set for on-demand deployments: never rate-limited
    choices: int = 0

    def with_completion(self, completion_tokens: int) -> Demand:
        """This demand with another completion bound (admission's floor and cap).

        Built field by field: ``dataclasses.replace`` walks the fields
        generically, at about twice the cost, on every admission.
        """
        return Demand(
            self.request_id,
            self.account_id,
            self.kind,
            self.model,
            self.billing_model,
            self.price_class,
            self.explicit_price_micros,
            self.prompt_tokens,
            completion_tokens,
            self.images,
            self.deployment,
            self.choices,
        )


class Ticket(Protocol):
    """An admitted request; carries the rate-limit headers for its answer."""

    @property
    def headers(self) -> dict[str, str]: ...

    @property
    def hold(self) -> dict[str, object] | None:
        """What the ticket holds (a reservation), as JSON-able values; None if nothing.

        The in-flight journal writes it within a flush interval of admission, so
        that when this process dies a later one can close it with ``Admission.recover``.
        """
        ...

    @property
    def completion_cap(self) -> int | None:
        """The most completion tokens per choice this ticket pays for; None: the demand's."""
        ...

    async def settle(self, usage: UsageRecord | None) -> None:
        """Settle to ``usage`` (or release when ``None``); later calls do nothing."""
        ...

    async def settle_soon(self, usage: UsageRecord | None) -> None:
        """``settle``, possibly after the answer is sent (off the response path).

        Serving calls it once the usage record is safely queued; until the
        settlement runs, the reservation keeps holding the worst case.
        """
        ...


class Admission(Protocol):
    """Admits requests: suspension, rate limit, spend reservation."""

    async def admit(self, principal: Principal, demand: Demand) -> Ticket:
        """A ticket for ``demand``, or raise ``RateLimited`` / ``PaymentRequired``."""
        ...

    async def recover(self, hold: dict[str, object], usage: UsageRecord | None) -> None:
        """Close a ``Ticket.hold`` left by a dead process: settle to ``usage`` or release.

        Idempotent (a hold already settled or released changes nothing);
        never raises.
        """
        ...


@dataclass
class OpenTicket:
    """A ticket that holds nothing."""

    headers: dict[str, str] = field(default_factory=dict)
    completion_cap: int | None = None

    @property
    def hold(self) -> dict[str, object] | None:
        return None

    async def settle(self, usage: UsageRecord | None) -> None:
        return None

    async def settle_soon(self, usage: UsageRecord | None) -> None:
        return None


class OpenAdmission:
    """Admits every request (no limits configured)."""

    async def admit(self, principal: Principal, demand: Demand) -> Ticket:
        return OpenTicket()

    async def recover(self, hold: dict[str, object], usage: UsageRecord | None) -> None:
        return None
