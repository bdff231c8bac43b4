"""When a ModelTraining runs: its cron schedule and the run asked for by hand. Pure (the caller
passes the clock), tested as a table in tests/test_training_logic.py.

The rules are CronJob's with `concurrencyPolicy: Forbid`: a scheduled time that passes while a
run is going is skipped (and counted), one missed by more than `startingDeadlineSeconds` (the
operator was down) is skipped too, and after any gap at most the latest missed time runs. A run
asked for by hand while another is going waits for it; it is never dropped.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from cronsim import CronSim, CronSimError

from ..api.modeltraining import ModelTrainingSpec
from ..render.names import manual_run_name, scheduled_run_name

# The macros Kubernetes CronJobs accept, as the five fields cronsim reads.
MACROS = {
    "@yearly": "0 0 1 1 *",
    "@annually": "0 0 1 1 *",
    "@monthly": "0 0 1 * *",
    "@weekly": "0 0 * * 0",
    "@daily": "0 0 * * *",
    "@midnight": "0 0 * * *",
    "@hourly": "0 * * * *",
}
# Scheduled times walked through after a gap before giving up on counting them one by one.
MAX_MISSED = 1000


class ScheduleError(ValueError):
    """The schedule or time zone cannot be read; the message names the field."""


@dataclass(frozen=True)
class Due:
    """A run to start now."""

    run: str
    trigger: Literal["schedule", "manual"]
    request: str | None = None
    """The annotation value a run by hand answers."""


@dataclass(frozen=True)
class Plan:
    """What the schedule says at `now`."""

    due: Due | None
    last_schedule_time: datetime | None
    """The latest scheduled time dealt with (run, skipped or missed)."""
    next_schedule_time: datetime | None
    skipped: int = 0
    """Scheduled times skipped because a run was going."""
    missed: int = 0
    """Scheduled times skipped because they were noticed too late."""


def _zone(spec: ModelTrainingSpec) -> ZoneInfo:
    try:
        return ZoneInfo(spec.time_zone)
    except (ZoneInfoNotFoundError, ValueError):
        raise ScheduleError(f"spec.timeZone: unknown time zone {spec.time_zone!r}") from None


def check_schedule(spec: ModelTrainingSpec) -> None:
    """Raise ScheduleError if the schedule or time zone cannot be used."""
    if spec.schedule is not None:
        _times(spec, datetime(2000, 1, 1, tzinfo=_zone(spec)))


def _times(spec: ModelTrainingSpec, after: datetime) -> CronSim:
    assert spec.schedule is not None
    expression = MACROS.get(spec.schedule, spec.schedule)
    try:
        return CronSim(expression, after.astimezone(_zone(spec)))
    except CronSimError as exc:
        raise ScheduleError(
            f"spec.schedule: {spec.schedule!r} is not a cron schedule: {exc}"
        ) from None


def plan(
    name: str,
    spec: ModelTrainingSpec,
    *,
    now: datetime,
    created: datetime,
    last_schedule_time: datetime | None,
    running: bool,
    request: str | None,
    last_request: str | None,
) -> Plan:
    """The run due at `now`, if any. `request` is the run-by-hand annotation's value and
    `last_request` the last one acted on; `running` says whether a run is going."""
    last, upcoming, skipped, missed = last_schedule_time, None, 0, 0
    scheduled: datetime | None = None
    if spec.schedule is not None:
        times = _times(spec, last_schedule_time or created)
        for _ in range(MAX_MISSED):
            upcoming = next(times)
            if upcoming > now:
                break
            if scheduled is not None:  # an earlier missed time: only the latest may run
                missed += 1
            scheduled, upcoming = upcoming, None
        else:  # down for longer than MAX_MISSED times: all missed; count again from now
            scheduled, upcoming, last, missed = None, next(_times(spec, now)), now, MAX_MISSED
    if scheduled is not None:
        last = scheduled
        deadline = timedelta(seconds=spec.starting_deadline_seconds)
        if spec.suspend or now - scheduled > deadline:
            missed, scheduled = missed + 1, None
        elif running:
            skipped, scheduled = 1, None
    if running:
        return Plan(None, last, upcoming, skipped, missed)
    if request and request != last_request:
        # A run by hand goes first; a scheduled time that coincides is covered by it.
        due = Due(manual_run_name(name, request), "manual", request)
        return Plan(due, last, upcoming, skipped, missed)
    if scheduled is not None:
        return Plan(Due(scheduled_run_name(name, scheduled), "schedule"), last, upcoming, 0, missed)
    return Plan(None, last, upcoming, skipped, missed)
