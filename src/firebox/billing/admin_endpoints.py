"""Operator routes of billing: closing a month by hand and the test clock.

The test clock (``FIREBOX_TEST_CLOCK=1``, never in production) lets an
operator jump the whole platform forward in time, as Stripe's test clocks
do, to watch a month close: after each jump the period-close job runs once,
so invoices, charges and payment retries that came due happen before the
answer is sent.
"""

from __future__ import annotations

from datetime import UTC, timedelta
from typing import Any

from fastapi import APIRouter, Request

from firebox.billing.period import PeriodCloseJob, PeriodCloser
from firebox.billing.schemas import (
    AdvanceClockRequest,
    AdvanceClockResult,
    ClosePeriodRequest,
    CloseReport,
    TestClockState,
)
from firebox.clock import Clock, OffsetClock
from firebox.errors import FailedPrecondition, InvalidArgument
from firebox.http.auth import CurrentPrincipal

_DUMP: dict[str, Any] = {"response_model_by_alias": True}
# Far enough for any billing scenario; near enough that now() + a year never overflows.
MAX_JUMP = timedelta(days=3653)


def _clock(request: Request) -> Clock:
    clock: Clock = request.app.state.services.clock
    return clock


def _test_clock(request: Request) -> OffsetClock | None:
    clock: OffsetClock | None = getattr(request.app.state.services, "test_clock", None)
    return clock


def _require_test_clock(request: Request) -> OffsetClock:
    clock = _test_clock(request)
    if clock is None:
        raise FailedPrecondition(
            "The test clock is off. Start the server with FIREBOX_TEST_CLOCK=1 in a "
            "non-production environment to move time.",
            code="test_clock_disabled",
        )
    return clock


def build_router() -> APIRouter:
    """Routes under ``/v1/admin``; every one is for the operator only."""
    router = APIRouter(prefix="/v1/admin", tags=["admin"])

    @router.get("/testClock", response_model=TestClockState, **_DUMP)
    def get_test_clock(request: Request, principal: CurrentPrincipal) -> TestClockState:
        """The platform's time and, when the test clock is on, how far it was moved."""
        principal.require_operator()
        test_clock = _test_clock(request)
        offset = 0 if test_clock is None else int(test_clock.offset.total_seconds())
        return TestClockState(
            now=(test_clock or _clock(request)).now(),
            offset_seconds=offset,
            enabled=test_clock is not None,
        )

    @router.post("/testClock:advance", response_model=AdvanceClockResult, **_DUMP)
    def advance_test_clock(
        request: Request, principal: CurrentPrincipal, body: AdvanceClockRequest
    ) -> AdvanceClockResult:
        """Move the test clock to ``to``, then run the period-close job once."""
        principal.require_operator()
        clock = _require_test_clock(request)
        if body.to.tzinfo is None:
            raise InvalidArgument(
                "Give 'to' with a time zone, e.g. 2026-02-01T00:00:00Z.",
                code="invalid_time",
                param="to",
            )
        if body.to.astimezone(UTC) - clock.now() > MAX_JUMP:
            raise InvalidArgument(
                f"The test clock is at {clock.now().isoformat()}; move it at most 10 years "
                "ahead per call.",
                code="clock_too_far",
                param="to",
            )
        try:
            clock.advance_to(body.to.astimezone(UTC))
        except ValueError:
            raise InvalidArgument(
                f"The test clock is at {clock.now().isoformat()}; it only moves forward. "
                "Pass a later time.",
                code="clock_backwards",
                param="to",
            ) from None
        job: PeriodCloseJob = request.app.state.services.period_job
        run = job.run_once()
        return AdvanceClockResult(
            now=clock.now(),
            closed_periods=list(run.closed_periods),
            payment_attempts=run.payment_attempts,
            errors=list(run.errors),
        )

    @router.post("/billing:closePeriod", response_model=CloseReport, **_DUMP)
    def close_period(
        request: Request, principal: CurrentPrincipal, body: ClosePeriodRequest
    ) -> CloseReport:
        """Close one ended month now (idempotent); the job does this on its own too."""
        principal.require_operator()
        closer: PeriodCloser = request.app.state.services.period_closer
        return CloseReport.of(closer.close_period(body.period))

    return router
