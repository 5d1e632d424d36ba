"""Live job events for the event-stream routes, fanned out so that database load does not grow
with the number of listeners.

One `EventHub` per API process (on `app.state`) runs one watcher, started with the first
subscriber and stopped after `IDLE_STOP_SECONDS` without any (or at shutdown). The watcher learns
which jobs have new events: on PostgreSQL from `LISTEN job_events` on one dedicated connection
(each event's transaction sends `NOTIFY job_events, '<job id>'`), polling the watched jobs'
event counts while that connection is down; on SQLite by polling the newest event id every
`SQLITE_POLL_SECONDS`. It then reads each affected job's new events once and hands them to every
subscriber of that job. A subscriber reads the database itself only for its catch-up (the
history it has not seen), and again if it fell more than `SUBSCRIBER_BACKLOG` events behind.

An experiment's stream reads its log by `experiment_seq`, the order in which its events
committed (jobs.events): its history in pages of `EXPERIMENT_PAGE_EVENTS`, then whatever
follows each time the hub wakes it (`LISTEN experiment_events` on PostgreSQL, a new newest id
on SQLite, every poll while LISTEN is down, and at least every `EXPERIMENT_CHECK_SECONDS`). Each
read is one indexed range of new events; an id is one number however many jobs the experiment
has, and a search's new trials need no following of their own.

Why nothing is missed or sent twice: the hub keeps, per watched job, the seq of the last event
it handed out, and always reads on from there; a job's events become visible in seq order
(jobs.events). A subscriber registers before its catch-up read, so everything the hub hands out
after that reaches it, and anything handed out before has a seq its catch-up already saw (or,
for a job the hub was not yet watching, the subscriber re-reads: `caught_up`). Each subscriber
keeps its own cursor and skips what it has already sent."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import logging
import time
from collections import deque
from collections.abc import AsyncIterator, Callable, Collection, Iterable
from typing import Any, TypeVar

import anyio
import psycopg
from sse_starlette import ServerSentEvent
from starlette.concurrency import run_in_threadpool

from jobs.db import (
    POSTGRES_REPLY_TIMEOUT_SECONDS,
    is_postgresql,
    psycopg_connect_arguments,
    session_scope,
)
from jobs.events import (
    EXPERIMENT_EVENTS_CHANNEL,
    JOB_EVENTS_CHANNEL,
    Cursor,
    LoggedEvent,
    ended_statuses,
    event_counts,
    events_after,
    experiment_events_after,
    latest_event_id,
)
from jobs.settings import get_settings
from jobs.status_counts import experiment_counts
from jobs.tables import JobStatus, experiment_status

logger = logging.getLogger(__name__)
T = TypeVar("T")

SQLITE_POLL_SECONDS = 0.25
# While the LISTEN connection is down, the watched jobs' event counts are polled this often.
POSTGRES_POLL_SECONDS = 1.0
# A LISTEN connection that hears nothing this long is asked a SELECT 1 (a frozen server or a
# half-open connection says nothing; without the check the stream would stall silently).
LISTEN_CHECK_SECONDS = 10.0
LISTEN_RETRY_FIRST_SECONDS = 0.5
LISTEN_RETRY_MAX_SECONDS = 10.0
WATCHER_ERROR_PAUSE_SECONDS = 1.0
IDLE_STOP_SECONDS = 30.0
# How the LISTEN connection shows in pg_stat_activity.
WATCHER_APPLICATION_NAME = "cifar-jobs event watcher"
# Events a subscriber may have waiting (its client reads slowly); beyond that they are dropped
# and the subscriber re-reads the log from its cursor once it catches up.
SUBSCRIBER_BACKLOG = 1000
# An experiment stream reads its log in pages of this many events.
EXPERIMENT_PAGE_EVENTS = 500
# An experiment stream reads again at least this often, whatever it was told.
EXPERIMENT_CHECK_SECONDS = 5.0


class Subscription:
    """One stream's mailbox: the events of its jobs that the hub handed out, in order."""

    def __init__(self, job_ids: Collection[int], *, backlog: int) -> None:
        self.job_ids = frozenset(job_ids)
        # Per job, the seq after which the hub hands this subscription every event: its last
        # handed-out seq when the subscription joined (None until the hub watches the job).
        self.joined_at: dict[int, int | None] = {}
        self._backlog = backlog
        self._pending: deque[LoggedEvent] = deque()
        self._ready = asyncio.Event()
        self._stale = False

    def deliver(self, events: list[LoggedEvent]) -> None:
        if not self._stale:
            if len(self._pending) + len(events) > self._backlog:
                self.mark_stale()
                return
            self._pending.extend(events)
        self._ready.set()

    def mark_stale(self) -> None:
        """Some events will not arrive here: the subscriber must re-read the log."""
        self._pending.clear()
        self._stale = True
        self._ready.set()

    async def next_events(self) -> list[LoggedEvent] | None:
        """The events handed out since the last call, oldest first; None when some were
        dropped, so that the subscriber re-reads the log from its cursor."""
        await self._ready.wait()
        self._ready.clear()
        if self._stale:
            self._stale = False
            return None
        events = list(self._pending)
        self._pending.clear()
        return events


class EventHub:
    """The process's subscribers and its one watcher. Used from the event loop only."""

    def __init__(
        self,
        *,
        sqlite_poll_seconds: float = SQLITE_POLL_SECONDS,
        idle_stop_seconds: float = IDLE_STOP_SECONDS,
        backlog: int = SUBSCRIBER_BACKLOG,
    ) -> None:
        self.sqlite_poll_seconds = sqlite_poll_seconds
        self.idle_stop_seconds = idle_stop_seconds
        self.backlog = backlog
        self._loop: asyncio.AbstractEventLoop | None = None
        self._subscriptions: dict[int, set[Subscription]] = {}
        # Per experiment, the wake-ups of the streams that follow it.
        self._experiment_waiters: dict[int, set[asyncio.Event]] = {}
        # Per watched job, the seq of the last event handed to its subscribers.
        self._handed_out: dict[int, int] = {}
        # Watched jobs to read at the next pass whatever the change detection says.
        self._dirty: set[int] = set()
        self._wake = asyncio.Event()
        self._watcher: _Watcher | None = None
        self._idle_since = time.monotonic()
        # The watcher's database calls never wait behind the streams' catch-up reads.
        self._limiter = anyio.CapacityLimiter(1)

    # -- subscribers -----------------------------------------------------------------------

    def subscribe(self, job_ids: Collection[int]) -> Subscription:
        """Start receiving these jobs' new events; then read the history and call
        `caught_up`."""
        self._bind_to_running_loop()
        subscription = Subscription(job_ids, backlog=self.backlog)
        for job_id in subscription.job_ids:
            subscription.joined_at[job_id] = self._handed_out.get(job_id)
            self._subscriptions.setdefault(job_id, set()).add(subscription)
        if self._watcher is None:
            self._watcher = _Watcher(self, get_settings().resolved_database_url)
        return subscription

    def subscribe_experiment(self, experiment_id: int) -> asyncio.Event:
        """A wake-up, set whenever the experiment may have new events."""
        self._bind_to_running_loop()
        waiter = asyncio.Event()
        self._experiment_waiters.setdefault(experiment_id, set()).add(waiter)
        if self._watcher is None:
            self._watcher = _Watcher(self, get_settings().resolved_database_url)
        return waiter

    def unsubscribe_experiment(self, experiment_id: int, waiter: asyncio.Event) -> None:
        waiters = self._experiment_waiters.get(experiment_id)
        if waiters is not None:
            waiters.discard(waiter)
            if not waiters:
                del self._experiment_waiters[experiment_id]
        if not self._subscriptions and not self._experiment_waiters:
            self._idle_since = time.monotonic()

    def _wake_experiments(self, experiment_ids: Iterable[int] | None = None) -> None:
        """Wake the streams of these experiments (None: of every experiment)."""
        chosen = self._experiment_waiters.keys() if experiment_ids is None else experiment_ids
        for experiment_id in list(chosen):
            for waiter in self._experiment_waiters.get(experiment_id, ()):
                waiter.set()

    def caught_up(self, subscription: Subscription, cursor: Cursor) -> None:
        """The subscriber's catch-up read saw each job up to cursor[job]."""
        for job_id in subscription.job_ids:
            subscribers = self._subscriptions.get(job_id, set())
            if subscription not in subscribers:
                continue
            seen = cursor.get(job_id, 0)
            if job_id not in self._handed_out:
                # The first reader of a job sets where the hub reads on from; whoever joined
                # before it gets everything after that.
                self._handed_out[job_id] = seen
                for other in subscribers:
                    if other.joined_at[job_id] is None:
                        other.joined_at[job_id] = seen
                self._dirty.add(job_id)
                self._wake.set()
            elif seen < (subscription.joined_at[job_id] or 0):
                # Events up to there were handed out before this subscriber joined, and its
                # read ended earlier: it reads again.
                subscription.mark_stale()

    def unsubscribe(self, subscription: Subscription) -> None:
        for job_id in subscription.job_ids:
            subscribers = self._subscriptions.get(job_id)
            if subscribers is None:
                continue
            subscribers.discard(subscription)
            if not subscribers:
                del self._subscriptions[job_id]
                self._handed_out.pop(job_id, None)
                self._dirty.discard(job_id)
        if not self._subscriptions and not self._experiment_waiters:
            self._idle_since = time.monotonic()

    async def stop(self) -> None:
        """Stop the watcher (app shutdown)."""
        watcher, self._watcher = self._watcher, None
        if watcher is not None:
            await watcher.cancel()

    # -- for the watcher -------------------------------------------------------------------

    def _bind_to_running_loop(self) -> None:
        # An app object can outlive an event loop (test clients start one per session): state
        # from a loop that is gone is dropped, not reused.
        loop = asyncio.get_running_loop()
        if self._loop is not loop:
            self._loop = loop
            self._subscriptions.clear()
            self._experiment_waiters.clear()
            self._handed_out.clear()
            self._dirty.clear()
            self._wake = asyncio.Event()
            self._watcher = None
            self._idle_since = time.monotonic()
            self._limiter = anyio.CapacityLimiter(1)

    async def _in_thread(self, function: Callable[..., T], **kwargs: Any) -> T:
        return await anyio.to_thread.run_sync(
            functools.partial(function, **kwargs), limiter=self._limiter
        )

    def _watched(self) -> set[int]:
        return set(self._handed_out)

    def _take_dirty(self) -> set[int]:
        dirty, self._dirty = self._dirty, set()
        return dirty

    def _idle_too_long(self) -> bool:
        idle_seconds = time.monotonic() - self._idle_since
        return (
            not self._subscriptions
            and not self._experiment_waiters
            and idle_seconds > self.idle_stop_seconds
        )

    def _hand_out(self, events: Iterable[LoggedEvent]) -> None:
        batches: dict[Subscription, list[LoggedEvent]] = {}
        for event in events:
            handed_out = self._handed_out.get(event.job_id)
            if handed_out is None or event.seq <= handed_out:
                continue  # no longer watched, or already handed out
            self._handed_out[event.job_id] = event.seq
            for subscription in self._subscriptions.get(event.job_id, ()):
                batches.setdefault(subscription, []).append(event)
        for subscription, batch in batches.items():
            subscription.deliver(batch)


class _Watcher:
    """One run of the hub's watcher: from the first subscriber until idle or shutdown."""

    def __init__(self, hub: EventHub, database_url: str) -> None:
        self.hub = hub
        self.database_url = database_url
        self.postgres = is_postgresql(database_url)
        self.latest_event_id: int | None = None
        self.notified: set[int] = set()
        self.notified_experiments: set[int] = set()
        self.listening = False
        self.listener = asyncio.create_task(self._listen()) if self.postgres else None
        self.task = asyncio.create_task(self._run())

    async def cancel(self) -> None:
        for task in (self.listener, self.task):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task

    def _poll_seconds(self) -> float:
        if not self.postgres:
            return self.hub.sqlite_poll_seconds
        return LISTEN_CHECK_SECONDS if self.listening else POSTGRES_POLL_SECONDS

    async def _run(self) -> None:
        hub = self.hub
        try:
            while hub._watcher is self:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(hub._wake.wait(), self._poll_seconds())
                hub._wake.clear()
                if hub._watcher is not self:
                    return
                if hub._idle_too_long():
                    hub._watcher = None  # the next subscriber starts a new one at once
                    return
                try:
                    await self._pass()
                except Exception as error:
                    logger.warning("event watcher: %s; retrying", error)
                    hub._dirty |= hub._watched()  # read them all again once it works
                    await asyncio.sleep(WATCHER_ERROR_PAUSE_SECONDS)
        finally:
            if self.listener is not None:
                self.listener.cancel()

    async def _pass(self) -> None:
        """Find the watched jobs with new events, read those events once, hand them out."""
        hub = self.hub
        changed = await self._changed_jobs() | hub._take_dirty()
        cursor = {job_id: hub._handed_out[job_id] for job_id in changed & hub._watched()}
        if not cursor:
            return
        try:
            events = await hub._in_thread(_read_events, job_ids=list(cursor), cursor=cursor)
        except BaseException:
            hub._dirty |= set(cursor)
            raise
        hub._hand_out(events)

    async def _changed_jobs(self) -> set[int]:
        hub = self.hub
        if not self.postgres:
            if not hub._watched() and not hub._experiment_waiters:
                return set()  # a newly watched job is read in full (dirty) anyway
            latest = await hub._in_thread(_read_latest_event_id)
            if latest == self.latest_event_id:
                return set()
            self.latest_event_id = latest
            hub._wake_experiments()
            return hub._watched()
        if self.listening:
            notified, self.notified = self.notified, set()
            experiments, self.notified_experiments = self.notified_experiments, set()
            hub._wake_experiments(experiments)
            return notified
        hub._wake_experiments()  # polling: each experiment stream reads what is new
        watched = hub._watched()
        if not watched:
            return set()
        counts = await hub._in_thread(_read_event_counts, job_ids=watched)
        return {
            job_id for job_id, count in counts.items() if count > hub._handed_out.get(job_id, 0)
        }

    async def _listen(self) -> None:
        """Hold one LISTEN connection, reconnecting with backoff; the watcher polls meanwhile."""
        conninfo, parameters = psycopg_connect_arguments(self.database_url)
        delay = LISTEN_RETRY_FIRST_SECONDS
        while True:
            try:
                connection = await psycopg.AsyncConnection.connect(
                    conninfo,
                    autocommit=True,
                    application_name=WATCHER_APPLICATION_NAME,
                    **parameters,
                )
                try:
                    await connection.execute(f"LISTEN {JOB_EVENTS_CHANNEL}")
                    await connection.execute(f"LISTEN {EXPERIMENT_EVENTS_CHANNEL}")
                    self.listening = True
                    # Whatever committed before LISTEN took effect is read once now.
                    self.hub._dirty |= self.hub._watched()
                    self.hub._wake_experiments()
                    self.hub._wake.set()
                    delay = LISTEN_RETRY_FIRST_SECONDS
                    while True:
                        async for notify in connection.notifies(timeout=LISTEN_CHECK_SECONDS):
                            with contextlib.suppress(ValueError):
                                if notify.channel == EXPERIMENT_EVENTS_CHANNEL:
                                    self.notified_experiments.add(int(notify.payload))
                                else:
                                    self.notified.add(int(notify.payload))
                                self.hub._wake.set()
                        await asyncio.wait_for(
                            connection.execute("SELECT 1"), POSTGRES_REPLY_TIMEOUT_SECONDS
                        )
                finally:
                    self.listening = False
                    self.hub._wake.set()
                    with contextlib.suppress(Exception):
                        await asyncio.wait_for(connection.close(), POSTGRES_REPLY_TIMEOUT_SECONDS)
            except (psycopg.Error, OSError, TimeoutError) as error:
                logger.warning(
                    "event listener: %s; polling every %g s, reconnecting in %g s",
                    error,
                    POSTGRES_POLL_SECONDS,
                    delay,
                )
            await asyncio.sleep(delay)
            delay = min(delay * 2, LISTEN_RETRY_MAX_SECONDS)


# -- database reads (in a worker thread, each in its own short read transaction) ------------


def _read_events(*, job_ids: list[int], cursor: Cursor) -> list[LoggedEvent]:
    with session_scope(write=False) as session:
        return events_after(session, job_ids=job_ids, cursor=cursor)


def _read_latest_event_id() -> int:
    with session_scope(write=False) as session:
        return latest_event_id(session)


def _read_event_counts(*, job_ids: set[int]) -> dict[int, int]:
    with session_scope(write=False) as session:
        return event_counts(session, job_ids)


def _read_history(
    *, job_ids: list[int], cursor: Cursor
) -> tuple[dict[int, str], list[LoggedEvent]]:
    """Which jobs have ended, then the events after the cursor: in this order, so that a job
    seen ended has its last event among those read."""
    with session_scope(write=False) as session:
        ended = ended_statuses(session, job_ids)
        events = events_after(session, job_ids=job_ids, cursor=cursor)
    return ended, events


def _read_experiment(
    *, experiment_id: int, after: int
) -> tuple[JobStatus | None, list[LoggedEvent]]:
    """The experiment's status if every job of it has ended (None while one has not), then its
    next page of events after experiment_seq `after`: in this order, so that an experiment seen
    ended has its last events among those read or still to read."""
    with session_scope(write=False) as session:
        counts = experiment_counts(session, [experiment_id]).get(experiment_id, {})
        present = [status for status, jobs in counts.items() if jobs > 0]
        ended = (
            experiment_status(present)
            if present and all(JobStatus(status).ended for status in present)
            else None
        )
        events = experiment_events_after(
            session, experiment_id, after, limit=EXPERIMENT_PAGE_EVENTS
        )
    return ended, events


# -- one stream ------------------------------------------------------------------------------


class _Follower:
    """Follows one job's log from a cursor: the history, then live events, until the job has
    ended. `cursor` and `ended` are current at each event yielded."""

    def __init__(self, hub: EventHub, job_ids: Collection[int], cursor: Cursor) -> None:
        self.hub = hub
        self.job_ids = sorted(job_ids)
        self.cursor = dict(cursor)
        self.ended: dict[int, str] = {}

    def _all_ended(self) -> bool:
        return all(job_id in self.ended for job_id in self.job_ids)

    def _unseen(self, events: list[LoggedEvent]) -> Iterable[LoggedEvent]:
        for event in events:
            if event.seq <= self.cursor.get(event.job_id, 0):
                continue
            self.cursor[event.job_id] = event.seq
            if event.ended_status is not None:
                self.ended[event.job_id] = event.ended_status
            yield event

    async def events(self) -> AsyncIterator[LoggedEvent]:
        subscription = self.hub.subscribe(self.job_ids)
        try:
            ended, history = await run_in_threadpool(
                functools.partial(_read_history, job_ids=self.job_ids, cursor=dict(self.cursor))
            )
            read_up_to = dict(self.cursor)
            for event in history:
                read_up_to[event.job_id] = max(read_up_to.get(event.job_id, 0), event.seq)
            self.hub.caught_up(subscription, read_up_to)
            self.ended.update(ended)
            for event in self._unseen(history):
                yield event
            while not self._all_ended():
                live = await subscription.next_events()
                if live is None:  # fell behind: read on from the cursor instead
                    live = await run_in_threadpool(
                        functools.partial(
                            _read_events, job_ids=self.job_ids, cursor=dict(self.cursor)
                        )
                    )
                for event in self._unseen(live):
                    yield event
        finally:
            self.hub.unsubscribe(subscription)


# The last event of every stream, after which the server closes it (the log's own kinds are
# jobs.events' STATUS_EVENT and EPOCH_EVENT).
END_EVENT = "end"


def _sse(event: str, data: dict[str, Any], event_id: str | None = None) -> ServerSentEvent:
    return ServerSentEvent(
        json.dumps(data, separators=(",", ":"), allow_nan=False), event=event, id=event_id
    )


async def job_event_stream(hub: EventHub, job_id: int, seen_seq: int) -> AsyncIterator[Any]:
    """A job's events after seq `seen_seq` (id: the seq), then `end` once the job has ended."""
    follower = _Follower(hub, [job_id], {job_id: seen_seq})
    async for event in follower.events():
        yield _sse(event.kind, event.data, str(event.seq))
    yield _sse(END_EVENT, {"job_id": job_id, "status": follower.ended[job_id]})


async def experiment_event_stream(
    hub: EventHub, experiment_id: int, after: int, seen: Cursor | None = None
) -> AsyncIterator[Any]:
    """The experiment's events after experiment_seq `after` (id: the event's experiment_seq),
    less those a per-job cursor `seen` (an id of the stream's earlier form) covers; then `end`
    once every job of it has ended."""
    seen = seen or {}
    waiter = hub.subscribe_experiment(experiment_id)
    try:
        while True:
            waiter.clear()  # a wake-up during the read below is kept for the wait after it
            ended, events = await run_in_threadpool(
                functools.partial(_read_experiment, experiment_id=experiment_id, after=after)
            )
            for event in events:
                after = int(event.experiment_seq or after)
                if event.seq > seen.get(event.job_id, 0):
                    yield _sse(event.kind, event.data, str(after))
            if len(events) == EXPERIMENT_PAGE_EVENTS:
                continue
            if ended is not None:
                yield _sse(END_EVENT, {"experiment_id": experiment_id, "status": str(ended)})
                return
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(waiter.wait(), EXPERIMENT_CHECK_SECONDS)
    finally:
        hub.unsubscribe_experiment(experiment_id, waiter)
