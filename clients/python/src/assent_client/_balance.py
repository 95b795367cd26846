"""Spreading calls over the replicas, and retrying the calls that are safe to send again.

Each replica has its own channel. A call goes to the next replica in turn, skipping for a second
one that last failed with UNAVAILABLE (unless every replica is being skipped). A unary call is
tried up to 4 times (the ``attempts`` of the client), each time on the next replica:

- refused with UNAVAILABLE, when it changes nothing (its method is in :data:`READ_ONLY`): 10,
  20 and 40 ms apart. Any other call is not sent again: its answer may have been lost after it
  was applied;
- refused with RESOURCE_EXHAUSTED by assent with a ``RetryInfo`` (the server shedding load),
  read or write alike: after the delay the server asked for, plus up to half of it again as
  jitter, unless that delay is over the client's ``max_pause`` (:data:`MAX_PAUSE`, 200 ms, as
  the Rust client's).

A retry that would not start before the call's deadline is not made: the refusal is raised.
"""

from __future__ import annotations

import itertools
import random
import time
from typing import Any, Callable, Sequence

import grpc

from . import errors

#: Calls that change nothing: retried on UNAVAILABLE (a write never is).
READ_ONLY: frozenset[str] = frozenset(
    {
        "/assent.v1.Decisions/Check",
        "/assent.v1.Decisions/BatchCheck",
        "/assent.v1.Subjects/GetSubject",
        "/assent.v1.Subjects/ConsentHistory",
        "/assent.v1.Audit/ListEvents",
        "/assent.v1.Audit/VerifyChain",
        "/assent.v1.Audit/GetCheckpoint",
        "/assent.v1.Audit/GetInclusionProof",
        "/assent.v1.Audit/GetConsistencyProof",
        "/assent.v1.Audit/ExportSubject",
        "/assent.v1.Audit/VerifyState",
        "/assent.v1.Audit/ListDecisions",
        "/assent.v1.Policies/ListPolicies",
        "/assent.v1.Policies/GetPolicy",
        "/assent.v1.Policies/DiffPolicy",
        "/assent.v1.Retention/Query",
        "/assent.v1.Retention/Due",
        "/assent.v1.Rights/GetRequest",
        "/assent.v1.Rights/ListRequests",
        "/assent.v1.Rights/ListOverdue",
    }
)

#: Pauses before the 2nd, 3rd and 4th try of a read-only call refused with UNAVAILABLE (the
#: last one again before any further try, when a client is given more attempts).
RETRY_PAUSES: tuple[float, ...] = (0.010, 0.020, 0.040)

#: Tries of a unary call, the first included, unless the client is given another number.
ATTEMPTS = len(RETRY_PAUSES) + 1

#: The longest pause a ``RetryInfo`` may ask for and still be waited out, unless the client is
#: given another: a call asked to wait longer is not retried (the refusal is raised, for the
#: caller to decide). 200 ms: about the whole budget of a gateway's call.
MAX_PAUSE = 0.2

#: How long a replica that failed with UNAVAILABLE is left out of the rotation.
SKIP_SECONDS = 1.0

#: Channel options: reconnect quickly after a replica comes back (gRPC's default backoff grows
#: to two minutes, far longer than a replica restart).
CHANNEL_OPTIONS: tuple[tuple[str, Any], ...] = (
    ("grpc.min_reconnect_backoff_ms", 100),
    ("grpc.initial_reconnect_backoff_ms", 100),
    ("grpc.max_reconnect_backoff_ms", 2000),
)

Metadata = Sequence[tuple[str, str]]


class Rotation:
    """Which replica the next call goes to."""

    def __init__(self, count: int) -> None:
        if count < 1:
            raise ValueError("targets: at least one replica address is needed")
        self.count = count
        self._turn = itertools.count()
        self._skipped_until = [0.0] * count

    def pick(self, avoid: int | None = None) -> int:
        """The next replica not being skipped (other than ``avoid`` when there is another)."""
        start = next(self._turn)
        now = time.monotonic()
        fallback = None
        for step in range(self.count):
            index = (start + step) % self.count
            if index == avoid and self.count > 1:
                continue
            if self._skipped_until[index] <= now:
                return index
            if fallback is None:
                fallback = index
        # Every replica is being skipped: keep rotating rather than refuse to call.
        return fallback if fallback is not None else start % self.count

    def failed(self, index: int) -> None:
        """``index`` answered UNAVAILABLE: leave it out for :data:`SKIP_SECONDS`."""
        self._skipped_until[index] = time.monotonic() + SKIP_SECONDS


def is_unavailable(error: BaseException) -> bool:
    return isinstance(error, grpc.RpcError) and error.code() == grpc.StatusCode.UNAVAILABLE  # type: ignore[attr-defined]


def pause_before_retry(
    error: BaseException,
    *,
    attempt: int,
    attempts: int,
    read_only: bool,
    deadline: float | None,
    max_pause: float = MAX_PAUSE,
) -> float | None:
    """The pause before trying again a call whose try number ``attempt`` (0 the first) failed
    with ``error``; None: raise ``error``."""
    if attempt + 1 >= attempts or not isinstance(error, grpc.RpcError):
        return None
    code = error.code()  # type: ignore[attr-defined]
    if code == grpc.StatusCode.UNAVAILABLE and read_only:
        pause = RETRY_PAUSES[min(attempt, len(RETRY_PAUSES) - 1)]
    elif code == grpc.StatusCode.RESOURCE_EXHAUSTED:
        shed = shed_pause(error, max_pause)
        if shed is None:
            return None
        pause = shed
    else:
        return None
    if deadline is not None and time.monotonic() + pause >= deadline:
        return None
    return pause


def shed_pause(error: BaseException, max_pause: float = MAX_PAUSE) -> float | None:
    """The pause before sending again a call refused with RESOURCE_EXHAUSTED, or None when it
    is not to be sent again.

    assent sends a ``RetryInfo`` with RESOURCE_EXHAUSTED only when it shed the call before doing
    any of its work (its concurrency limit, the caller's write rate, the caller's open streams):
    nothing was applied, so a write is as safe to send again as a read. A RESOURCE_EXHAUSTED
    without one (a message over a size limit, or one from something else than assent) is not
    retried: sending the same call again would meet the same refusal, or could apply twice.
    The pause is the delay asked for plus up to half of it again, so that callers shed together
    do not come back together.
    """
    found = errors.details(error)
    if found.domain != errors.DOMAIN or found.retry_delay is None:
        return None
    if found.retry_delay > max_pause:
        return None
    return random.uniform(found.retry_delay, 1.5 * found.retry_delay)


def checked_attempts(attempts: int) -> int:
    if attempts < 1:
        raise ValueError("attempts: at least 1 (the first try)")
    return attempts


def with_token(metadata: Metadata | None, token_metadata: Metadata) -> Metadata | None:
    if not token_metadata:
        return metadata
    return tuple(metadata or ()) + tuple(token_metadata)


class _SyncUnaryUnary:
    """``channel.unary_unary(...)`` over every replica: rotation, token, default deadline,
    retries (of read-only methods on UNAVAILABLE, of any on RESOURCE_EXHAUSTED with a
    ``RetryInfo``)."""

    def __init__(self, balanced: "BalancedChannel", method: str, kwargs: dict[str, Any]) -> None:
        self._balanced = balanced
        self._method = method
        self._read_only = method in READ_ONLY
        self._callables = [channel.unary_unary(method, **kwargs) for channel in balanced.channels]

    def _invoke(
        self,
        with_call: bool,
        request: Any,
        timeout: float | None,
        metadata: Metadata | None,
        **options: Any,
    ) -> Any:
        balanced = self._balanced
        rotation = balanced.rotation
        if timeout is None:
            timeout = balanced.default_timeout
        deadline = None if timeout is None else time.monotonic() + timeout
        metadata = with_token(metadata, balanced.token_metadata)
        attempts = balanced.attempts
        index: int | None = None
        for attempt in range(attempts):
            index = rotation.pick(avoid=index)
            remaining = None if deadline is None else max(deadline - time.monotonic(), 0.0)
            callable_ = self._callables[index]
            try:
                if with_call:
                    return callable_.with_call(
                        request, timeout=remaining, metadata=metadata, **options
                    )
                return callable_(request, timeout=remaining, metadata=metadata, **options)
            except grpc.RpcError as error:
                if is_unavailable(error):
                    rotation.failed(index)
                pause = pause_before_retry(
                    error,
                    attempt=attempt,
                    attempts=attempts,
                    read_only=self._read_only,
                    deadline=deadline,
                    max_pause=balanced.max_pause,
                )
                if pause is None:
                    raise
                time.sleep(pause)
        raise AssertionError("unreachable")  # pragma: no cover

    def __call__(
        self,
        request: Any,
        timeout: float | None = None,
        metadata: Metadata | None = None,
        **options: Any,
    ) -> Any:
        return self._invoke(False, request, timeout, metadata, **options)

    def with_call(
        self,
        request: Any,
        timeout: float | None = None,
        metadata: Metadata | None = None,
        **options: Any,
    ) -> Any:
        return self._invoke(True, request, timeout, metadata, **options)

    def future(
        self,
        request: Any,
        timeout: float | None = None,
        metadata: Metadata | None = None,
        **options: Any,
    ) -> Any:
        """Not retried (the caller holds the future); still rotated and with the token."""
        balanced = self._balanced
        index = balanced.rotation.pick()
        return self._callables[index].future(
            request,
            timeout=balanced.default_timeout if timeout is None else timeout,
            metadata=with_token(metadata, balanced.token_metadata),
            **options,
        )


class _StreamingCall:
    """A streaming call of one replica, which marks the replica on UNAVAILABLE."""

    def __init__(self, call: Any, on_unavailable: Callable[[], None]) -> None:
        self._call = call
        self._on_unavailable = on_unavailable

    def __iter__(self) -> "_StreamingCall":
        return self

    def __next__(self) -> Any:
        try:
            return next(self._call)
        except grpc.RpcError as error:
            if is_unavailable(error):
                self._on_unavailable()
            raise

    def __getattr__(self, name: str) -> Any:
        return getattr(self._call, name)


class _SyncStreaming:
    """``unary_stream`` / ``stream_unary`` / ``stream_stream`` over the replicas: rotated, with
    the token, never retried (a stream's messages cannot be taken back)."""

    def __init__(
        self, balanced: "BalancedChannel", kind: str, method: str, kwargs: dict[str, Any]
    ) -> None:
        self._balanced = balanced
        self._kind = kind
        self._callables = [
            getattr(channel, kind)(method, **kwargs) for channel in balanced.channels
        ]

    def _call(
        self,
        attribute: str | None,
        request: Any,
        timeout: float | None,
        metadata: Metadata | None,
        **options: Any,
    ) -> Any:
        balanced = self._balanced
        index = balanced.rotation.pick()
        callable_ = self._callables[index]
        target = callable_ if attribute is None else getattr(callable_, attribute)
        result = target(
            request,
            timeout=timeout,
            metadata=with_token(metadata, balanced.token_metadata),
            **options,
        )
        if self._kind.endswith("_stream") and attribute is None:
            return _StreamingCall(result, lambda: balanced.rotation.failed(index))
        return result

    def __call__(
        self,
        request: Any,
        timeout: float | None = None,
        metadata: Metadata | None = None,
        **options: Any,
    ) -> Any:
        return self._call(None, request, timeout, metadata, **options)

    def with_call(
        self,
        request: Any,
        timeout: float | None = None,
        metadata: Metadata | None = None,
        **options: Any,
    ) -> Any:
        return self._call("with_call", request, timeout, metadata, **options)

    def future(
        self,
        request: Any,
        timeout: float | None = None,
        metadata: Metadata | None = None,
        **options: Any,
    ) -> Any:
        return self._call("future", request, timeout, metadata, **options)


class BalancedChannel(grpc.Channel):
    """A ``grpc.Channel`` over one channel per replica, for the generated stubs."""

    def __init__(
        self,
        channels: Sequence[grpc.Channel],
        token: str | None,
        default_timeout: float | None,
        attempts: int = ATTEMPTS,
        max_pause: float = MAX_PAUSE,
    ) -> None:
        self.channels = list(channels)
        self.rotation = Rotation(len(self.channels))
        self.token_metadata: Metadata = (("authorization", f"Bearer {token}"),) if token else ()
        self.default_timeout = default_timeout
        self.attempts = checked_attempts(attempts)
        self.max_pause = max_pause

    def unary_unary(self, method: str, *args: Any, **kwargs: Any) -> Any:
        return _SyncUnaryUnary(self, method, _keywords(args, kwargs))

    def unary_stream(self, method: str, *args: Any, **kwargs: Any) -> Any:
        return _SyncStreaming(self, "unary_stream", method, _keywords(args, kwargs))

    def stream_unary(self, method: str, *args: Any, **kwargs: Any) -> Any:
        return _SyncStreaming(self, "stream_unary", method, _keywords(args, kwargs))

    def stream_stream(self, method: str, *args: Any, **kwargs: Any) -> Any:
        return _SyncStreaming(self, "stream_stream", method, _keywords(args, kwargs))

    def subscribe(self, callback: Any, try_to_connect: bool = False) -> None:
        for channel in self.channels:
            channel.subscribe(callback, try_to_connect)

    def unsubscribe(self, callback: Any) -> None:
        for channel in self.channels:
            channel.unsubscribe(callback)

    def close(self) -> None:
        for channel in self.channels:
            channel.close()

    def __enter__(self) -> "BalancedChannel":
        return self

    def __exit__(self, *exc_info: Any) -> None:
        self.close()


def _keywords(args: tuple[Any, ...], kwargs: dict[str, Any]) -> dict[str, Any]:
    """The serializer arguments of ``unary_unary(method, request_serializer, ...)``, by name."""
    names = ("request_serializer", "response_deserializer")
    merged = dict(zip(names, args))
    merged.update(kwargs)
    return merged


# --- grpc.aio -----------------------------------------------------------------------------


class _AsyncUnaryUnary:
    """The asyncio counterpart of :class:`_SyncUnaryUnary`: calling it gives an awaitable."""

    def __init__(
        self, balanced: "AsyncBalancedChannel", method: str, kwargs: dict[str, Any]
    ) -> None:
        self._balanced = balanced
        self._read_only = method in READ_ONLY
        self._callables = [channel.unary_unary(method, **kwargs) for channel in balanced.channels]

    async def _invoke(
        self, request: Any, timeout: float | None, metadata: Metadata | None, **options: Any
    ) -> Any:
        import asyncio

        balanced = self._balanced
        rotation = balanced.rotation
        if timeout is None:
            timeout = balanced.default_timeout
        deadline = None if timeout is None else time.monotonic() + timeout
        metadata = with_token(metadata, balanced.token_metadata)
        attempts = balanced.attempts
        index: int | None = None
        for attempt in range(attempts):
            index = rotation.pick(avoid=index)
            remaining = None if deadline is None else max(deadline - time.monotonic(), 0.0)
            try:
                return await self._callables[index](
                    request, timeout=remaining, metadata=metadata, **options
                )
            except grpc.RpcError as error:
                if is_unavailable(error):
                    rotation.failed(index)
                pause = pause_before_retry(
                    error,
                    attempt=attempt,
                    attempts=attempts,
                    read_only=self._read_only,
                    deadline=deadline,
                    max_pause=balanced.max_pause,
                )
                if pause is None:
                    raise
                await asyncio.sleep(pause)
        raise AssertionError("unreachable")  # pragma: no cover

    def __call__(
        self,
        request: Any,
        timeout: float | None = None,
        metadata: Metadata | None = None,
        **options: Any,
    ) -> Any:
        return self._invoke(request, timeout, metadata, **options)


class _AsyncStreaming:
    """Streaming calls over the replicas (grpc.aio): rotated, with the token, not retried."""

    def __init__(
        self, balanced: "AsyncBalancedChannel", kind: str, method: str, kwargs: dict[str, Any]
    ) -> None:
        self._balanced = balanced
        self._callables = [
            getattr(channel, kind)(method, **kwargs) for channel in balanced.channels
        ]

    def __call__(
        self,
        request: Any = None,
        timeout: float | None = None,
        metadata: Metadata | None = None,
        **options: Any,
    ) -> Any:
        balanced = self._balanced
        index = balanced.rotation.pick()
        return self._callables[index](
            request,
            timeout=timeout,
            metadata=with_token(metadata, balanced.token_metadata),
            **options,
        )


class AsyncBalancedChannel:
    """The grpc.aio counterpart of :class:`BalancedChannel` (duck-typed for the stubs)."""

    def __init__(
        self,
        channels: Sequence[Any],
        token: str | None,
        default_timeout: float | None,
        attempts: int = ATTEMPTS,
        max_pause: float = MAX_PAUSE,
    ) -> None:
        self.channels = list(channels)
        self.rotation = Rotation(len(self.channels))
        self.token_metadata: Metadata = (("authorization", f"Bearer {token}"),) if token else ()
        self.default_timeout = default_timeout
        self.attempts = checked_attempts(attempts)
        self.max_pause = max_pause

    def unary_unary(self, method: str, *args: Any, **kwargs: Any) -> Any:
        return _AsyncUnaryUnary(self, method, _keywords(args, kwargs))

    def unary_stream(self, method: str, *args: Any, **kwargs: Any) -> Any:
        return _AsyncStreaming(self, "unary_stream", method, _keywords(args, kwargs))

    def stream_unary(self, method: str, *args: Any, **kwargs: Any) -> Any:
        return _AsyncStreaming(self, "stream_unary", method, _keywords(args, kwargs))

    def stream_stream(self, method: str, *args: Any, **kwargs: Any) -> Any:
        return _AsyncStreaming(self, "stream_stream", method, _keywords(args, kwargs))

    async def close(self, grace: float | None = None) -> None:
        for channel in self.channels:
            await channel.close(grace)
