"""Step output from workers to the coordinator while steps run: one bounded Redis stream per run.

Worker side (``OutputPusher``, one per attempt): every line is masked, written in
full to the worker's log file, and queued (bounded, in bytes) for a thread that
XADDs batches of lines to ``devctl:run:{run_id}:output``. The coordinator
(``OutputReader``, one per run) XREADs the stream, hands each line to the step's
sink (listeners, the coordinator's run store) and XDELs what it read, so the
stream's length is what the coordinator has not consumed yet. The pusher waits
while that exceeds ``BACKLOG`` entries (backpressure, so nothing is thrown away
while the coordinator keeps up); with no coordinator progress for ``STALL``
seconds it stops waiting and ``MAXLEN ~`` trims the stream instead. Either way
Redis holds at most about ``MAX_ENTRIES`` x ``BATCH_BYTES`` per run, and each
pusher at most ``QUEUE_BYTES`` in memory; lines that overflow are counted, said
so in the stream, and are in the worker's log file.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from collections import deque
from pathlib import Path
from typing import IO, Any

import redis
import redis.asyncio as aioredis
from redis.exceptions import RedisError

from devctl_dist.core.secrets import Masker, named_secrets
from devctl_dist.history.paths import safe_name, state_dir
from devctl_dist.runners.base import OutputSink, StepSpec

log = logging.getLogger(__name__)

BATCH_BYTES = 16 * 1024
BACKLOG = 32  # unread entries before the pusher waits for the coordinator
MAX_ENTRIES = 256  # MAXLEN ~: the hard bound when nobody reads
QUEUE_BYTES = 4 * 1024 * 1024
STALL = 10.0  # seconds without coordinator progress before the pusher stops waiting
FLUSH_EVERY = 0.05
ROOM_WAIT = 0.5  # the longest a full queue holds the worker's loop without the stream moving
STREAM_TTL = 3600
END_WAIT = 3.0  # coordinator: how long to wait for a step's last lines without any progress
STREAMS = {"stdout": "o", "stderr": "e", "o": "stdout", "e": "stderr"}


def output_key(run_id: str) -> str:
    return f"devctl:run:{run_id}:output"


def worker_log_path(spec: StepSpec) -> Path:
    """Where a worker keeps the full output of one attempt."""
    return (
        state_dir()
        / "worker-logs"
        / safe_name(spec.run_id, 80)
        / f"{safe_name(spec.name)}.{spec.attempt}.log"
    )


class OutputPusher:
    """Worker side of one attempt: an ``OutputSink`` that logs every line and streams it (bounded)."""

    def __init__(self, client: redis.Redis, spec: StepSpec, task_id: str) -> None:
        self.client, self.task_id, self.key = client, task_id, output_key(spec.run_id)
        self.masker = Masker([*spec.secrets, *named_secrets(spec.env)])
        self.path = worker_log_path(spec)
        self.file: IO[str] | None = self._open(self.path)
        self.queue: deque[tuple[str, str]] = deque()
        self.queued = 0
        self.dropped = 0
        self.seq = 0
        self.sent = 0
        self.cond = threading.Condition()
        self.closing = False
        self.waiting_allowed = True
        self.thread: threading.Thread | None = None  # started by the first line: most steps print none

    @property
    def started(self) -> bool:
        """Whether any line was queued (so a thread pushes, and ``close`` has something to wait for)."""
        return self.thread is not None

    def _start(self) -> None:
        self.thread = threading.Thread(
            target=self._push_forever, name=f"devctl-output-{self.task_id}", daemon=True
        )
        self.thread.start()

    @staticmethod
    def _open(path: Path) -> IO[str] | None:
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            return path.open("a", encoding="utf-8", errors="replace", buffering=64 * 1024)
        except OSError as error:
            log.error("cannot write the step log %s: %s", path, error)
            return None

    def step_output(self, name: str, stream: str, line: str) -> None:
        line = self.masker.mask(line)
        if self.file is not None:
            self.file.write(line + "\n")
        with self.cond:
            if self.thread is None:
                self._start()
            if self.queued + len(line) > QUEUE_BYTES and not self._wait_for_room(len(line)):
                self.dropped += 1
                return
            self.queue.append((STREAMS.get(stream, "o"), line))
            self.queued += len(line) + 1
            if self.queued >= BATCH_BYTES:
                self.cond.notify()

    def _wait_for_room(self, size: int) -> bool:
        """Hold the step's output (its pipe fills, the step waits) while the stream moves; False if stalled.

        Each wait is short and ends as soon as the pusher takes the queue, so the
        worker's loop (lease renewal, timeouts) keeps turning between lines.
        """
        while self.waiting_allowed:
            sent = self.sent
            self.cond.wait(ROOM_WAIT)
            if self.queued + size <= QUEUE_BYTES:
                return True
            if self.sent == sent:
                return False
        return False

    def close(self, timeout: float = 60.0) -> None:
        """Push what is queued (bounded wait), then the end marker; close the log file. Idempotent."""
        with self.cond:
            self.closing = True
            self.cond.notify()
        if timeout > 0 and self.thread is not None:
            self.thread.join(timeout)
        if self.file is not None and not self.file.closed:
            with contextlib.suppress(OSError):
                self.file.close()

    def _push_forever(self) -> None:
        while True:
            with self.cond:
                if not self.queue and not self.closing:
                    self.cond.wait(FLUSH_EVERY)
                batches = self._take()
                done = self.closing and not self.queue
                self.cond.notify_all()  # room again for a step_output waiting in _wait_for_room
            try:
                for stream, data in batches:
                    self._send({"o": stream, "d": data})
                if done:
                    self._send_end()
                    return
            except (RedisError, OSError) as error:
                log.warning("output stream of %s lost (%s); the worker log has it all", self.task_id, error)
                return

    def _send_end(self) -> None:
        if self.dropped:
            note = f"[devctl: {self.dropped} lines not streamed; the worker's log has them: {self.path}]"
            self._send({"o": "e", "d": note})
        if self.seq:  # the coordinator waits for this only when there were lines
            self._send({"end": "1"})

    def _take(self) -> list[tuple[str, str]]:
        """Queued lines as (stream, text) batches of at most ``BATCH_BYTES``, one stream per batch."""
        batches: list[tuple[str, str]] = []
        lines: list[str] = []
        size, current = 0, ""
        while self.queue:
            stream, line = self.queue[0]
            if lines and (stream != current or size + len(line) > BATCH_BYTES):
                batches.append((current, "\n".join(lines)))
                lines, size = [], 0
            self.queue.popleft()
            self.queued -= len(line) + 1
            lines.append(line)
            size += len(line) + 1
            current = stream
        if lines:
            batches.append((current, "\n".join(lines)))
        return batches

    def _send(self, fields: dict[Any, Any]) -> None:
        self._wait_for_reader()
        self.seq += 1
        pipe = self.client.pipeline(transaction=False)
        pipe.xadd(
            self.key, {"t": self.task_id, "n": str(self.seq), **fields}, maxlen=MAX_ENTRIES, approximate=True
        )
        pipe.expire(self.key, STREAM_TTL)
        pipe.execute()
        self.sent += 1

    def _wait_for_reader(self) -> None:
        """Backpressure: while the coordinator is ``BACKLOG`` entries behind, wait (unless it stalled)."""
        if not self.waiting_allowed:
            return
        last, since = -1, time.monotonic()
        while True:
            length = int(self.client.xlen(self.key))
            if length <= BACKLOG:
                return
            if length != last:
                last, since = length, time.monotonic()
            elif time.monotonic() - since > STALL:
                log.warning("no coordinator reads the output of %s: streaming without waiting", self.task_id)
                self.waiting_allowed = False
                return
            time.sleep(0.01)


Sink = tuple[str, OutputSink]


class OutputReader:
    """Coordinator side of one run's stream: routes lines to the sink of their task id."""

    def __init__(self, client: aioredis.Redis, run_id: str) -> None:
        self.client, self.key = client, output_key(run_id)
        self.sinks: dict[str, Sink] = {}
        self.ended: dict[str, asyncio.Event] = {}
        self.progress: dict[str, float] = {}
        self.last_id = "0-0"
        self.task: asyncio.Task[None] | None = None

    def attach(self, task_id: str, name: str, sink: OutputSink) -> None:
        self.sinks[task_id] = (name, sink)
        self.ended[task_id] = asyncio.Event()
        self.progress[task_id] = time.monotonic()
        if self.task is None or self.task.done():
            self.task = asyncio.create_task(self._read_forever(), name=f"devctl-output-{self.key}")

    async def finish(self, task_id: str) -> None:
        """The step ended: wait for its last lines (while they keep coming), then detach its sink."""
        event = self.ended.get(task_id)
        try:
            while event is not None and not event.is_set():
                idle = time.monotonic() - self.progress.get(task_id, 0.0)
                if idle > END_WAIT:
                    break
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(event.wait(), END_WAIT - idle + 0.01)
        finally:
            self.sinks.pop(task_id, None)
            self.ended.pop(task_id, None)
            self.progress.pop(task_id, None)

    async def close(self) -> None:
        if self.task is not None:
            self.task.cancel()
            with contextlib.suppress(asyncio.CancelledError, RedisError, OSError):
                await self.task

    async def _read_forever(self) -> None:
        backoff = 0.1
        while True:
            try:
                reply: Any = await self.client.xread({self.key: self.last_id}, count=64, block=1000)
                backoff = 0.1
            except (RedisError, OSError) as error:
                log.warning("output stream %s: %s; retrying", self.key, type(error).__name__)
                await asyncio.sleep(backoff)  # a reconnect backoff, not a poll
                backoff = min(2.0, backoff * 2)
                continue
            entries: list[tuple[Any, dict[Any, Any]]] = [entry for _, batch in reply or [] for entry in batch]
            for _, fields in entries:
                self._route(fields)
            if entries:
                self.last_id = _text(entries[-1][0])
                with contextlib.suppress(RedisError, OSError):  # read: its room is the pusher's again
                    await self.client.xdel(self.key, *(entry_id for entry_id, _ in entries))

    def _route(self, raw: dict[Any, Any]) -> None:
        fields = {_text(k): _text(v) for k, v in raw.items()}
        task_id = fields.get("t", "")
        target = self.sinks.get(task_id)
        if target is None:
            return
        self.progress[task_id] = time.monotonic()
        if "end" in fields:
            self.ended[task_id].set()
            return
        name, sink = target
        stream = STREAMS.get(fields.get("o", "o"), "stdout")
        for line in fields.get("d", "").split("\n"):
            sink.step_output(name, stream, line)


class OutputReaders:
    """The coordinator's readers, one per run it drives."""

    def __init__(self) -> None:
        self.readers: dict[str, OutputReader] = {}

    def attach(self, client: aioredis.Redis, spec: StepSpec, task_id: str, sink: OutputSink) -> None:
        reader = self.readers.get(spec.run_id)
        if reader is None:
            reader = self.readers[spec.run_id] = OutputReader(client, spec.run_id)
        reader.attach(task_id, spec.name, sink)

    async def finish(self, run_id: str, task_id: str, streamed: int) -> None:
        """The step's outcome came: if it streamed lines, wait (bounded) for the last of them."""
        reader = self.readers.get(run_id)
        if reader is not None and streamed > 0:
            await reader.finish(task_id)

    def detach(self, run_id: str, task_id: str) -> None:
        reader = self.readers.get(run_id)
        if reader is not None:
            reader.sinks.pop(task_id, None)
            reader.ended.pop(task_id, None)
            reader.progress.pop(task_id, None)

    async def close(self) -> None:
        readers, self.readers = list(self.readers.values()), {}
        for reader in readers:
            await reader.close()


def _text(value: Any) -> str:
    return value.decode("utf-8", errors="replace") if isinstance(value, bytes) else str(value)
