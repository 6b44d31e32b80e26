"""What a resumed coordinator does with one attempt, given what earlier generations left in Redis.

Exactly once: since the resumed coordinator raised the run's generation before
looking, no earlier task can start any more (``runs``), so each earlier task id
is in one of three states: finished (an outcome), running (a lease), or never
started and never will. Hence, for attempt ``k`` of a step:

- an earlier success is reused;
- an earlier task still running is adopted (its report is awaited, not re-sent);
- an earlier failure is reused only if attempt ``k+1`` was already made (the
  retries go on from where they were); a failure that ended the step, or a
  cancellation, is run again under the new generation;
- nothing found: it never started, so it is sent now.
"""

from __future__ import annotations

from dataclasses import dataclass

import redis.asyncio as aioredis

from devctl_dist.distributed.runs import task_id_for
from devctl_dist.distributed.state import decode_outcome, lease_key, outcome_key
from devctl_dist.runners.base import StepOutcome, StepSpec


@dataclass(frozen=True)
class Earlier:
    """The decision: ``outcome`` to reuse, or ``adopt`` a running task id, or neither (send)."""

    outcome: StepOutcome | None = None
    adopt: str | None = None


async def earlier_attempt(client: aioredis.Redis, spec: StepSpec, generation: int) -> Earlier:
    """Look at attempts ``k`` and ``k+1`` of every earlier generation (one round trip)."""
    earlier = range(1, generation)
    if not earlier:
        return Earlier()
    this = [task_id_for(spec.run_id, spec.name, spec.attempt, g) for g in earlier]
    later = [task_id_for(spec.run_id, spec.name, spec.attempt + 1, g) for g in earlier]
    pipe = client.pipeline(transaction=True)
    for task_id in this + later:
        pipe.get(outcome_key(task_id))
        pipe.exists(lease_key(task_id))
    values = await pipe.execute()
    found = [(values[2 * i], bool(values[2 * i + 1])) for i in range(len(this) + len(later))]
    mine, after = found[: len(this)], found[len(this) :]
    outcomes = [decode_outcome(raw) for raw, _ in mine if raw is not None]
    for outcome in outcomes:
        if outcome.succeeded:
            return Earlier(outcome=outcome)
    for task_id, (raw, leased) in zip(this, mine, strict=True):
        if leased and raw is None:
            return Earlier(adopt=task_id)
    if outcomes and any(raw is not None or leased for raw, leased in after):
        return Earlier(outcome=outcomes[-1])
    return Earlier()
