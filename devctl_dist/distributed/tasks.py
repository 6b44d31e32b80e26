"""Worker side: the one task, ``devctl.run_step``, and the handlers that keep revokes honest.

The pool child runs the step through the same ``LocalRunner`` as local mode
(own session, group killed on timeout). A revoke with terminate sends SIGTERM to
the pool child only, so:

- in the child, a SIGTERM handler signals the step's process group, then lets the
  child die, as Celery and billiard expect;
- in the worker's main process, ``task_revoked`` / ``task_failure`` (also fired for
  hard time limits and lost pool children) kill every process carrying the task's
  id in its environment (``procs``: also ones that left the group), SIGKILL what
  outlives the grace, and report.

Whoever reports first wins (``SET NX``); each report means "no process is left".
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import threading
import time
from typing import Any

import redis
from celery import Celery, Task
from celery.exceptions import TimeLimitExceeded
from celery.signals import celeryd_init, task_failure, task_revoked, worker_ready, worker_shutdown
from redis.backoff import ExponentialBackoff
from redis.retry import Retry

from devctl_dist.distributed import kombu_patch, limits, procs, signing, worker_env
from devctl_dist.distributed.app import TASK_NAME, create_app, settings_of
from devctl_dist.distributed.registry import WorkerRegistration
from devctl_dist.distributed.state import WorkerState
from devctl_dist.distributed.streaming import OutputPusher
from devctl_dist.runners.base import StepOutcome, StepSpec
from devctl_dist.runners.local import LocalRunner
from devctl_dist.settings import Settings

log = logging.getLogger(__name__)

_clients: dict[tuple[int, str], redis.Redis] = {}
_worker_name: list[str] = []
_loops: dict[int, asyncio.AbstractEventLoop] = {}


def worker_state(settings: Settings) -> WorkerState:
    """This process's ``WorkerState`` (one Redis client per process and broker URL)."""
    key = (os.getpid(), settings.broker_url)
    client = _clients.get(key)
    if client is None:
        # Retried for ~15 s: a report must survive a Redis restart, not die with the connection.
        client = redis.Redis.from_url(
            settings.broker_url,
            socket_connect_timeout=settings.broker_connect_timeout,
            retry=Retry(ExponentialBackoff(cap=2.0, base=0.1), retries=12),
        )
        _clients[key] = client
    return WorkerState(client, settings.lease_seconds, settings.result_expires, limits.cancel_ttl(settings))


def run_step(
    task: Task,
    run_id: str,
    step_name: str,
    spec_dict: dict[str, Any],
    generation: int | None = None,
    signature: str | None = None,
) -> dict[str, Any]:
    """Run one rendered step on this worker and report its outcome (also returned, as JSON).

    ``generation``: the run's coordinator generation (a task of a run that is over
    never starts); ``signature``: required when this worker has a signing key.
    """
    task_id = str(task.request.id)
    key = signing.signing_key()
    if key is not None and not signing.verify(key, run_id, step_name, spec_dict, generation, signature):
        log.error("refused task %s: missing or wrong signature (DEVCTL_SIGNING_KEY)", task_id)
        return {"refused": "bad signature"}
    settings = settings_of(task.app)
    worker = str(task.request.hostname or _this_worker())
    state = worker_state(settings)
    claim = state.begin(task_id, worker, run_id, generation)
    if claim.duplicate:  # a re-delivered message of a step that ran or still runs: its report stands
        log.warning("task %s delivered again while it ran or after it ended: not run twice", task_id)
        return {"duplicate": True}
    if claim.refused is not None:
        outcome = StepOutcome(exit_code=None, error=claim.refused, worker=worker, ended_at=time.time())
    else:
        if claim.ran_before:  # a lost pool child may have left the step running
            procs.kill_marked(task_id, settings.kill_grace)
        outcome = _run_marked(StepSpec.from_dict(spec_dict), task, state, settings, worker)
    data = outcome.to_dict()
    state.finish(task_id, run_id, data)
    return data


def _run_marked(
    spec: StepSpec, task: Task, state: WorkerState, settings: Settings, worker: str
) -> StepOutcome:
    """Run with the task id in the step's environment, stopping it before Celery's hard limit would."""
    task_id = str(task.request.id)
    spec.env = {**spec.env, procs.TASK_ID_ENV: task_id, procs.WORKER_NAME_ENV: worker}
    hard = _hard_time_limit(task, settings)
    cap = limits.step_deadline_cap(hard, settings)
    capped = spec.timeout is None or spec.timeout > cap
    if capped:
        spec.timeout = cap
    outcome = _run_in_child(spec, state, task_id, settings)
    outcome.worker = worker
    if outcome.timed_out and capped:
        outcome.error = f"stopped at the task's hard time limit ({hard:g}s; DEVCTL_TASK_TIME_LIMIT)"
    if outcome.timed_out or outcome.exit_code is None or outcome.exit_code < 0:
        procs.kill_marked(task_id, settings.kill_grace)  # escapees from the group (setsid)
    return outcome


def _hard_time_limit(task: Task, settings: Settings) -> float:
    limits = task.request.timelimit or (None, None)
    hard = limits[0] if limits else None
    return float(hard) if hard else float(settings.hard_time_limit)


def _child_loop() -> asyncio.AbstractEventLoop:
    """One event loop per pool child, reused by every step it runs (a new loop per step costs ~0.4 ms)."""
    key = os.getpid()
    loop = _loops.get(key)
    if loop is None or loop.is_closed():
        loop = asyncio.new_event_loop()
        _loops[key] = loop
    return loop


def _run_in_child(spec: StepSpec, state: WorkerState, task_id: str, settings: Settings) -> StepOutcome:
    runner = LocalRunner(kill_grace=settings.kill_grace)
    previous = signal.signal(signal.SIGTERM, lambda signum, frame: _die_with_step(runner))
    try:
        return _child_loop().run_until_complete(_run_guarded(runner, spec, state, task_id, settings))
    except Exception as exc:  # the runner itself broke: still report, never leave the coordinator waiting
        log.exception("step %s failed to run", task_id)
        return StepOutcome(exit_code=None, error=f"worker error: {exc}", ended_at=time.time())
    finally:
        signal.signal(signal.SIGTERM, previous)


def _die_with_step(runner: LocalRunner) -> None:
    """SIGTERM in the pool child (Celery's terminate): signal the step's group, then die as Celery expects.

    billiard treats a child it sent SIGTERM as terminated for good: surviving it would
    stall the next job ~4 s and mislabel a later death as a revoke. The worker's main
    process (``task_revoked``) finishes the job: grace, SIGKILL, and the report.
    """
    runner.kill_all(signal.SIGTERM)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    os.kill(os.getpid(), signal.SIGTERM)


async def _run_guarded(
    runner: LocalRunner, spec: StepSpec, state: WorkerState, task_id: str, settings: Settings
) -> StepOutcome:
    """Run the step while keeping its lease alive."""
    started = time.time()
    worker = spec.env.get(procs.WORKER_NAME_ENV, _this_worker())
    renewer = asyncio.create_task(_renew_lease(state, task_id, worker, started, settings.lease_seconds / 3))
    pusher = OutputPusher(state.client, spec, task_id)  # lines to the coordinator, and to the worker's log
    try:
        outcome = await runner.run(spec, output=pusher)
        if pusher.started:  # its last lines are in Redis before the outcome is
            await asyncio.to_thread(pusher.close)
        outcome.streamed = pusher.seq
        return outcome
    finally:
        pusher.close(timeout=0)
        renewer.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await renewer  # leave nothing pending on the reused loop


async def _renew_lease(
    state: WorkerState, task_id: str, worker: str, started: float, interval: float
) -> None:
    """Keep the lease alive; in a thread, since the client retries through a Redis restart."""
    while True:
        await asyncio.sleep(interval)
        try:
            await asyncio.to_thread(state.renew, task_id, worker, started)
        except redis.RedisError as exc:  # Redis away for long: the coordinator will judge the silence
            log.warning("cannot renew lease of %s: %s", task_id, exc)


def _this_worker() -> str:
    return _worker_name[0] if _worker_name else f"devctl-{os.getpid()}"


LOST_CHILD_RETRIES = 2


def create_worker_app(settings: Settings | None = None) -> Celery:
    """A configured app with ``devctl.run_step`` registered: what a worker (or Flower) runs."""
    app = create_app(settings)
    register_tasks(app)
    return app


def register_tasks(app: Celery) -> None:
    """Register ``devctl.run_step`` on ``app``.

    Late ack; a lost pool child (OOM, kill -9) re-sends the task at once, at most
    ``LOST_CHILD_RETRIES`` times, then reports the failure: a step that keeps
    killing its worker cannot loop forever.
    """
    app.task(
        name=TASK_NAME,
        bind=True,
        acks_late=True,
        reject_on_worker_lost=True,
        retry_on_worker_lost=True,
        max_retries=LOST_CHILD_RETRIES,
        default_retry_delay=0,
        typing=True,
    )(run_step)


# --- worker main process -------------------------------------------------------------


def _remember_worker_name(sender: str, instance: Any = None, **_: Any) -> None:
    """At worker start (main process, before the pool forks): name, kombu patch, clean environment."""
    _worker_name[:] = [str(sender)]
    kombu_patch.apply()  # a broker blip must not kill the worker (see kombu_patch)
    kombu_patch.reuse_clients()  # no new Redis client per event and ack
    app = getattr(instance, "app", None)
    settings = settings_of(app) if app is not None else None
    if settings is not None:
        removed = worker_env.scrub_worker_environment(settings)
        if removed:
            log.info("steps will not see these worker variables: %s", ", ".join(removed))


def _on_revoked(sender: Any = None, request: Any = None, terminated: bool = False, **_: Any) -> None:
    """Revoked (terminated or before start): make sure nothing of the step survives, then report."""
    if getattr(sender, "name", None) != TASK_NAME or request is None:
        return
    args = list(getattr(request, "args", None) or [])
    reason = "cancelled: task revoked" if terminated else "cancelled before start (revoked)"
    _reap_in_background(sender.app, str(request.id), _run_id(args), reason, timed_out=False)


def _on_failure(sender: Any = None, task_id: str | None = None, exception: Any = None, **kw: Any) -> None:
    """Hard time limit or lost pool child: the step may be orphaned; kill it and report."""
    if getattr(sender, "name", None) != TASK_NAME or task_id is None:
        return
    timed_out = isinstance(exception, TimeLimitExceeded)
    reason = f"worker: {type(exception).__name__}: {exception}"
    _reap_in_background(sender.app, task_id, _run_id(list(kw.get("args") or [])), reason, timed_out)


_registration: list[WorkerRegistration] = []


def _register(sender: Any = None, **_: Any) -> None:
    """Worker ready: announce the queues it consumes (``registry``), for the coordinator's checks."""
    app = getattr(sender, "app", None)
    if app is None:
        return
    settings = settings_of(app)
    queues = list(app.amqp.queues.consume_from or [settings.default_queue])
    hostname = str(getattr(sender, "hostname", None) or _this_worker())
    registration = WorkerRegistration(worker_state(settings).client, hostname, [str(q) for q in queues])
    registration.start()
    _registration.append(registration)


def _unregister(**_: Any) -> None:
    while _registration:
        _registration.pop().stop()


celeryd_init.connect(_remember_worker_name, weak=False)
worker_ready.connect(_register, weak=False)
worker_shutdown.connect(_unregister, weak=False)
task_revoked.connect(_on_revoked, weak=False)
task_failure.connect(_on_failure, weak=False)


def _run_id(args: list[Any]) -> str | None:
    return str(args[0]) if args else None


def _reap_in_background(app: Celery, task_id: str, run_id: str | None, reason: str, timed_out: bool) -> None:
    """Kill and report off the worker's event loop: waiting out a grace period must not stall it."""
    settings = settings_of(app)
    thread = threading.Thread(
        target=_reap_and_report,
        args=(settings, task_id, run_id, reason, timed_out),
        name=f"devctl-reap-{task_id}",
        daemon=True,
    )
    thread.start()


def _reap_and_report(
    settings: Settings, task_id: str, run_id: str | None, reason: str, timed_out: bool
) -> None:
    gone = procs.kill_marked(task_id, settings.kill_grace)
    time.sleep(0.2)  # a pool child that was mid-spawn has now either died or registered its step
    gone = procs.kill_marked(task_id, settings.kill_grace) and gone
    if not gone:
        log.error("step processes of %s survived SIGKILL", task_id)
    if run_id is None:
        return
    outcome = StepOutcome(
        exit_code=None if not timed_out else -signal.SIGKILL,
        error=reason,
        timed_out=timed_out,
        ended_at=time.time(),
        worker=_this_worker(),
    )
    with contextlib.suppress(redis.RedisError):
        worker_state(settings).finish(task_id, run_id, outcome)
