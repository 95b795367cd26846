"""``LocalCache``: Checks answered from the caller's memory, kept fresh by ``Changes.Watch``.

The rules are those of docs/clients.md ("The local cache"), which the Rust client follows too:

- answers are remembered per subject, keyed by (purpose, conversation id, source); a change about
  a subject forgets its answers, a policy version applied forgets them all, an answer is not used
  at or after its ``valid_until``, a degraded answer (or one without a revision) is never
  remembered, and at most ``capacity`` subjects are held;
- a miss asks with ``at_least_as_fresh`` the last revision the Watch delivered, and its answer is
  remembered only when its revision is at least the subject's *floor* (the last change about the
  subject seen while it was being fetched) and no policy version was applied meanwhile;
- answers come from memory only while the cache is *fresh*: its Watch is open, has sent a
  heartbeat since it opened, and its last message is at most ``stale_after`` old. Otherwise
  every check asks the server (``WhenStale.ASK_SERVER``) or is answered DENY
  (``WhenStale.DENY``), and nothing is remembered;
- the Watch starts ``from_latest``, reconnects from the last revision it received (50 ms backoff
  doubling to 2 s), and on FAILED_PRECONDITION forgets everything and starts ``from_latest``
  again.

The hit path is a dict lookup keyed by a tuple, a monotonic clock compare and a float compare:
no protobuf work, no lock. The same :class:`Answer` object is returned by every hit on an entry;
treat its ``response`` as read-only.

Beyond the rules, a Watch that sends nothing for twice ``stale_after`` (a connection that went
silent without failing, such as one swallowed by a broken network path) is cancelled and opened
again, as one that failed.
"""

from __future__ import annotations

import asyncio
import enum
import itertools
import threading
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Optional

import grpc

from . import pb
from ._names import PurposeLike, SourceLike, purpose_value, source_value

if TYPE_CHECKING:
    from .client import AsyncClient, Client

_monotonic = time.monotonic
_wall = time.time

#: Reconnection backoff of the Watch: 50 ms doubling to 2 s.
BACKOFF_FIRST = 0.05
BACKOFF_MAX = 2.0

#: The least heartbeat interval the server accepts, and the most.
HEARTBEAT_MIN = 0.1
HEARTBEAT_MAX = 60.0

_REVISION_PREFIX = "r1."
_CONVERSATION = pb.SOURCE_CONVERSATION
_NEVER = float("inf")

Key = tuple[int, Optional[str], int]


class WhenStale(enum.Enum):
    """What a check does while the cache is not fresh."""

    #: Ask the server (the default).
    ASK_SERVER = "ask_server"
    #: Answer DENY without asking: reason STATE_UNAVAILABLE, degraded true, no rule.
    DENY = "deny"


@dataclass(frozen=True, slots=True)
class Answer:
    """A check's answer, and whether it came from memory (``False``: the server, or the DENY of
    ``WhenStale.DENY``)."""

    response: pb.CheckResponse
    from_memory: bool


@dataclass(frozen=True)
class CacheStats:
    """What the cache did so far, and where it stands."""

    #: Checks answered from memory.
    hits: int
    #: Checks that asked the server.
    misses: int
    #: Subjects forgotten by a change, plus one per policy version applied.
    invalidations: int
    #: Answers not used because their ``valid_until`` had come.
    expirations: int
    #: Checks made while not fresh.
    stale_answers: int
    #: Subjects held now.
    subjects: int
    #: The last revision the Watch delivered ("" before the first).
    revision: str
    #: Times the Watch was opened again after it ended, failed or went silent.
    reconnects: int
    #: Seconds since the last message of the Watch (of the previous stream while disconnected).
    staleness: float


def revision_number(token: str) -> int | None:
    """The position a revision token (``r1.<hex>``) names; ``None`` for another form."""
    if not token.startswith(_REVISION_PREFIX):
        return None
    try:
        return int(token[len(_REVISION_PREFIX) :], 16)
    except ValueError:
        return None


def _valid_until(response: pb.CheckResponse) -> float:
    """``valid_until`` as seconds since the epoch (infinity when unset)."""
    if not response.HasField("valid_until"):
        return _NEVER
    stamp = response.valid_until
    return stamp.seconds + stamp.nanos / 1e9


class _CacheCore:
    """The memory, the freshness and the rules; the Watch and the calls are the subclasses'."""

    def __init__(
        self,
        *,
        heartbeat_interval: float,
        stale_after: float | None,
        when_stale: WhenStale,
        capacity: int,
    ) -> None:
        if not HEARTBEAT_MIN <= heartbeat_interval <= HEARTBEAT_MAX:
            raise ValueError(
                f"heartbeat_interval: {heartbeat_interval} s is outside the "
                f"{HEARTBEAT_MIN}-{HEARTBEAT_MAX} s the server accepts"
            )
        if stale_after is None:
            stale_after = 3 * heartbeat_interval
        if stale_after <= 0:
            raise ValueError("stale_after: must be positive")
        if capacity < 1:
            raise ValueError("capacity: must be at least 1")
        if not isinstance(when_stale, WhenStale):
            raise TypeError("when_stale: a WhenStale")
        self.heartbeat_interval = heartbeat_interval
        self.stale_after = stale_after
        self.when_stale = when_stale
        self.capacity = capacity
        #: subject id -> {(purpose, conversation id, source): (Answer, valid_until)}.
        self._memory: dict[str, dict[Key, tuple[Answer, float]]] = {}
        #: Answers come from memory while the monotonic clock is before this.
        self._fresh_until = 0.0
        self._lock = threading.Lock()
        self._revision = ""
        self._stream_open = False
        self._caught_up = False
        self._created = _monotonic()
        self._last_message = 0.0
        #: Bumped when every answer is forgotten (a policy version, a resync).
        self._epoch = 0
        #: Misses in flight per subject, and the last change about it seen meanwhile.
        self._in_flight: dict[str, int] = {}
        self._floors: dict[str, int] = {}
        self._hits = 0
        self._misses = 0
        self._invalidations = 0
        self._expirations = 0
        self._stale_answers = 0
        self._reconnects = 0
        self._closed = False

    # --- the Watch's messages (called by the subclasses) ------------------------------------

    def _watch_request(self) -> pb.WatchRequest:
        request = pb.WatchRequest(heartbeat_interval_ms=round(self.heartbeat_interval * 1000))
        if self._revision:
            request.since_revision = self._revision
        else:
            request.from_latest = True
        return request

    def _stream_opened(self) -> None:
        with self._lock:
            self._stream_open = True
            self._caught_up = False
            self._fresh_until = 0.0

    def _stream_ended(self) -> None:
        with self._lock:
            self._stream_open = False
            self._caught_up = False
            self._fresh_until = 0.0

    def _on_message(self, message: pb.WatchResponse) -> bool:
        """Applies one message of the Watch; ``True`` for a heartbeat."""
        kind = message.WhichOneof("event")
        now = _monotonic()
        if kind == "heartbeat":
            with self._lock:
                self._revision = message.heartbeat.revision
                self._last_message = now
                self._caught_up = True
                if self._stream_open:
                    self._fresh_until = now + self.stale_after
            return True
        if kind == "change":
            change = message.change
            with self._lock:
                if change.kind == "policy_applied":
                    self._memory.clear()
                    self._epoch += 1
                    self._invalidations += 1
                else:
                    subject_id = change.subject_id
                    if self._memory.pop(subject_id, None) is not None:
                        self._invalidations += 1
                    if subject_id in self._in_flight:
                        number = revision_number(change.revision)
                        floor = _FLOOR_UNKNOWN if number is None else number
                        if floor > self._floors.get(subject_id, -1):
                            self._floors[subject_id] = floor
                self._revision = change.revision
                self._last_message = now
                if self._caught_up and self._stream_open:
                    self._fresh_until = now + self.stale_after
        return False

    def _resync(self) -> None:
        """The server cannot resume from our revision: forget everything, start from latest."""
        with self._lock:
            self._memory.clear()
            self._epoch += 1
            self._invalidations += 1
            self._revision = ""

    def _silent_for(self) -> float:
        """Seconds since the stream opened or last sent something."""
        return _monotonic() - max(self._last_message, self._stream_opened_at)

    _stream_opened_at = 0.0

    # --- checks -----------------------------------------------------------------------------

    def _expire(self, subject_id: str, key: Key, entry: tuple[Answer, float]) -> None:
        with self._lock:
            answers = self._memory.get(subject_id)
            if answers is not None and answers.get(key) is entry:
                del answers[key]
                if not answers:
                    del self._memory[subject_id]
            self._expirations += 1

    def _begin_miss(self, subject_id: str) -> tuple[str, int, bool]:
        """Registers a miss: (revision to ask at least as fresh as, epoch, fresh now)."""
        with self._lock:
            self._misses += 1
            self._in_flight[subject_id] = self._in_flight.get(subject_id, 0) + 1
            return self._revision, self._epoch, _monotonic() < self._fresh_until

    def _end_miss(
        self,
        subject_id: str,
        key: Key,
        response: pb.CheckResponse | None,
        epoch: int,
        fresh_at_start: bool,
    ) -> None:
        """Ends a miss, remembering its answer when the rules allow."""
        remember = (
            response is not None
            and fresh_at_start
            and not response.degraded
            and bool(response.revision)
        )
        number = revision_number(response.revision) if remember and response is not None else None
        valid_until = _valid_until(response) if remember and response is not None else _NEVER
        with self._lock:
            left = self._in_flight.get(subject_id, 1) - 1
            floor = self._floors.get(subject_id, -1)
            if left <= 0:
                self._in_flight.pop(subject_id, None)
                self._floors.pop(subject_id, None)
            else:
                self._in_flight[subject_id] = left
            if not remember or response is None or number is None:
                return
            if (
                number < floor
                or epoch != self._epoch
                or self._closed
                or not _monotonic() < self._fresh_until
                or not _wall() < valid_until
            ):
                return
            answers = self._memory.get(subject_id)
            if answers is None:
                if len(self._memory) >= self.capacity:
                    self._make_room()
                answers = self._memory[subject_id] = {}
            answers[key] = (Answer(response, True), valid_until)

    def _make_room(self) -> None:
        """Forgets the subjects held longest: 1% of the capacity at a time (at least one), so
        that a full cache pays for eviction once per hundred new subjects."""
        count = max(1, self.capacity // 100)
        for subject_id in list(itertools.islice(self._memory, count)):
            del self._memory[subject_id]

    def _deny(self, key: Key, subject_id: str, conversation_id: str | None) -> Answer:
        """The answer of ``WhenStale.DENY``: what a server gives when it cannot read the state."""
        response = pb.CheckResponse(
            subject_id=subject_id,
            purpose=key[0],  # type: ignore[arg-type]
            conversation_id=conversation_id or "",
            decision=pb.DECISION_DENY,
            reason=pb.REASON_STATE_UNAVAILABLE,
            degraded=True,
        )
        response.valid_until.FromNanoseconds(time.time_ns())
        return Answer(response, False)

    # --- state ------------------------------------------------------------------------------

    def fresh(self) -> bool:
        """Whether answers come from memory now (see the module's documentation)."""
        return _monotonic() < self._fresh_until

    def stats(self) -> CacheStats:
        now = _monotonic()
        last = self._last_message or self._created
        return CacheStats(
            hits=self._hits,
            misses=self._misses,
            invalidations=self._invalidations,
            expirations=self._expirations,
            stale_answers=self._stale_answers,
            subjects=len(self._memory),
            revision=self._revision,
            reconnects=self._reconnects,
            staleness=now - last,
        )


#: The floor of a change whose revision is not in a known form: nothing is remembered.
_FLOOR_UNKNOWN = 1 << 80


class LocalCache(_CacheCore):
    """Checks answered from memory, kept fresh by a Watch running in a daemon thread.

    ``client`` answers the misses; ``watch_client`` (default: ``client``) carries the Watch. The
    Watch starts at once; :meth:`wait_fresh` waits for its first heartbeat.
    """

    def __init__(
        self,
        client: "Client",
        *,
        heartbeat_interval: float = 1.0,
        stale_after: float | None = None,
        when_stale: WhenStale = WhenStale.ASK_SERVER,
        capacity: int = 100_000,
        watch_client: "Client | None" = None,
    ) -> None:
        super().__init__(
            heartbeat_interval=heartbeat_interval,
            stale_after=stale_after,
            when_stale=when_stale,
            capacity=capacity,
        )
        self._client = client
        self._watch_client = watch_client if watch_client is not None else client
        self._stop = threading.Event()
        self._call: Any = None
        self._call_lock = threading.Lock()
        self._watcher = threading.Thread(
            target=self._watch_forever, name="assent-cache-watch", daemon=True
        )
        self._guard = threading.Thread(
            target=self._guard_silence, name="assent-cache-silence", daemon=True
        )
        self._watcher.start()
        self._guard.start()

    def check(
        self,
        subject_id: str,
        purpose: PurposeLike,
        *,
        conversation_id: str | None = None,
        source: SourceLike | None = None,
    ) -> Answer:
        """The answer about ``subject_id`` (and ``conversation_id`` when given) for ``purpose``,
        under the policy in force now: from memory when fresh and held, otherwise from the
        server (or DENY while stale, with ``WhenStale.DENY``). Server errors are raised as
        ``grpc.RpcError``."""
        key = (
            purpose if type(purpose) is int else purpose_value(purpose),
            conversation_id,
            # The server reads UNSPECIFIED as CONVERSATION: one question, one key.
            _CONVERSATION
            if source is None
            else ((source if type(source) is int else source_value(source)) or _CONVERSATION),
        )
        if _monotonic() < self._fresh_until:
            answers = self._memory.get(subject_id)
            if answers is not None:
                entry = answers.get(key)
                if entry is not None:
                    if _wall() < entry[1]:
                        self._hits += 1
                        return entry[0]
                    self._expire(subject_id, key, entry)
        else:
            self._stale_answers += 1
            if self.when_stale is WhenStale.DENY:
                return self._deny(key, subject_id, conversation_id)
        return self._ask(subject_id, key, conversation_id, source)

    def _ask(
        self, subject_id: str, key: Key, conversation_id: str | None, source: SourceLike | None
    ) -> Answer:
        revision, epoch, fresh = self._begin_miss(subject_id)
        response = None
        try:
            response = self._client.check(
                subject_id,
                key[0],
                conversation_id=conversation_id,
                source=key[2],
                consistency=revision or None,
            )
        finally:
            self._end_miss(subject_id, key, response, epoch, fresh)
        return Answer(response, False)

    def wait_fresh(self, timeout: float) -> bool:
        """Waits up to ``timeout`` seconds for the cache to be fresh; whether it is."""
        deadline = _monotonic() + timeout
        while not self.fresh():
            if self._stop.is_set() or _monotonic() >= deadline:
                return self.fresh()
            time.sleep(0.005)
        return True

    # --- the Watch --------------------------------------------------------------------------

    def _watch_forever(self) -> None:
        backoff = BACKOFF_FIRST
        opened_before = False
        while not self._stop.is_set():
            if opened_before:
                self._reconnects += 1
            opened_before = True
            healthy = False
            try:
                call = self._watch_client.changes.Watch(self._watch_request())
                with self._call_lock:
                    if self._stop.is_set():
                        call.cancel()
                        break
                    self._call = call
                self._stream_opened_at = _monotonic()
                self._stream_opened()
                for message in call:
                    if self._on_message(message):
                        healthy = True
            except grpc.RpcError as error:
                if error.code() == grpc.StatusCode.FAILED_PRECONDITION:  # type: ignore[attr-defined]
                    self._resync()
            except Exception:  # noqa: BLE001 - the watch must outlive any one failure
                pass
            finally:
                with self._call_lock:
                    self._call = None
                self._stream_ended()
            if healthy:
                backoff = BACKOFF_FIRST
            if self._stop.wait(backoff):
                break
            if not healthy:
                backoff = min(backoff * 2, BACKOFF_MAX)

    def _guard_silence(self) -> None:
        """Cancels a Watch that has sent nothing for twice ``stale_after``, so that it is opened
        again (a stream can go silent without failing: a black-holed connection)."""
        limit = 2 * self.stale_after
        while not self._stop.wait(self.heartbeat_interval):
            with self._call_lock:
                if self._call is not None and self._silent_for() > limit:
                    self._call.cancel()

    def close(self) -> None:
        """Stops the Watch; later checks all ask the server."""
        self._closed = True
        self._stop.set()
        with self._call_lock:
            if self._call is not None:
                self._call.cancel()
        self._stream_ended()
        self._watcher.join(timeout=5)
        self._guard.join(timeout=5)

    def __enter__(self) -> "LocalCache":
        return self

    def __exit__(self, *exc_info: Any) -> None:
        self.close()


class AsyncLocalCache(_CacheCore):
    """The asyncio counterpart of :class:`LocalCache`: the Watch runs in a task of the loop.

    ``await cache.start()`` (or ``async with``) opens the Watch; ``await cache.check(...)``.
    """

    def __init__(
        self,
        client: "AsyncClient",
        *,
        heartbeat_interval: float = 1.0,
        stale_after: float | None = None,
        when_stale: WhenStale = WhenStale.ASK_SERVER,
        capacity: int = 100_000,
        watch_client: "AsyncClient | None" = None,
    ) -> None:
        super().__init__(
            heartbeat_interval=heartbeat_interval,
            stale_after=stale_after,
            when_stale=when_stale,
            capacity=capacity,
        )
        self._client = client
        self._watch_client = watch_client if watch_client is not None else client
        self._task: asyncio.Task[None] | None = None
        self._call: Any = None

    async def start(self) -> None:
        """Opens the Watch (once)."""
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(
                self._watch_forever(), name="assent-cache-watch"
            )

    async def check(
        self,
        subject_id: str,
        purpose: PurposeLike,
        *,
        conversation_id: str | None = None,
        source: SourceLike | None = None,
    ) -> Answer:
        """As :meth:`LocalCache.check`; a hit returns without yielding to the loop."""
        key = (
            purpose if type(purpose) is int else purpose_value(purpose),
            conversation_id,
            # The server reads UNSPECIFIED as CONVERSATION: one question, one key.
            _CONVERSATION
            if source is None
            else ((source if type(source) is int else source_value(source)) or _CONVERSATION),
        )
        if _monotonic() < self._fresh_until:
            answers = self._memory.get(subject_id)
            if answers is not None:
                entry = answers.get(key)
                if entry is not None:
                    if _wall() < entry[1]:
                        self._hits += 1
                        return entry[0]
                    self._expire(subject_id, key, entry)
        else:
            self._stale_answers += 1
            if self.when_stale is WhenStale.DENY:
                return self._deny(key, subject_id, conversation_id)
        revision, epoch, fresh = self._begin_miss(subject_id)
        response = None
        try:
            response = await self._client.check(
                subject_id,
                key[0],
                conversation_id=conversation_id,
                source=key[2],
                consistency=revision or None,
            )
        finally:
            self._end_miss(subject_id, key, response, epoch, fresh)
        return Answer(response, False)

    async def wait_fresh(self, timeout: float) -> bool:
        """Waits up to ``timeout`` seconds for the cache to be fresh; whether it is."""
        deadline = _monotonic() + timeout
        while not self.fresh():
            if self._closed or _monotonic() >= deadline:
                return self.fresh()
            await asyncio.sleep(0.005)
        return True

    async def _watch_forever(self) -> None:
        backoff = BACKOFF_FIRST
        opened_before = False
        limit = 2 * self.stale_after
        while not self._closed:
            if opened_before:
                self._reconnects += 1
            opened_before = True
            healthy = False
            call = None
            try:
                call = self._watch_client.changes.Watch(self._watch_request())
                self._call = call
                self._stream_opened_at = _monotonic()
                self._stream_opened()
                while True:
                    # A silent stream is given up as a failed one (see the module docs).
                    message = await asyncio.wait_for(call.read(), timeout=limit)
                    if message is grpc.aio.EOF:
                        break
                    if self._on_message(message):
                        healthy = True
            except asyncio.CancelledError:
                if call is not None:
                    call.cancel()
                self._stream_ended()
                raise
            except asyncio.TimeoutError:
                pass
            except grpc.RpcError as error:
                if error.code() == grpc.StatusCode.FAILED_PRECONDITION:  # type: ignore[attr-defined]
                    self._resync()
            except Exception:  # noqa: BLE001 - the watch must outlive any one failure
                pass
            if call is not None:
                call.cancel()
            self._call = None
            self._stream_ended()
            if healthy:
                backoff = BACKOFF_FIRST
            await asyncio.sleep(backoff)
            if not healthy:
                backoff = min(backoff * 2, BACKOFF_MAX)

    async def close(self) -> None:
        """Stops the Watch; later checks all ask the server."""
        self._closed = True
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            try:
                await task
            except (asyncio.CancelledError, Exception):  # noqa: BLE001
                pass
        self._stream_ended()

    async def __aenter__(self) -> "AsyncLocalCache":
        await self.start()
        return self

    async def __aexit__(self, *exc_info: Any) -> None:
        await self.close()
