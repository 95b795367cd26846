"""The ``google.rpc`` details of errors, and the retry of calls the server shed.

First what the client makes of details whatever sends them (statuses built here, as a server or
a proxy could send them: the cases a running assent does not produce on demand), then the real
server: the details of its refusals, a write shed by a caller's write rate and retried after
the pause the server asked for, and a Check shed by the concurrency limit.
"""

from __future__ import annotations

import asyncio
import threading
import time
from typing import Any

import grpc
import grpc.aio
import pytest
from google.protobuf import duration_pb2
from google.rpc import error_details_pb2, status_pb2
from grpc_status import rpc_status

import support
from assent_client import AsyncClient, Client, check_request, errors, pb
from assent_client._balance import BalancedChannel, pause_before_retry
from assent_client._proto import subjects_pb2_grpc

# --- details, whoever sends them -------------------------------------------------------------


def rich_status(code: grpc.StatusCode, message: str, *details: Any) -> status_pb2.Status:
    status = status_pb2.Status(code=code.value[0], message=message)
    for detail in details:
        status.details.add().Pack(detail)
    return status


def shed_status(
    retry_delay: float | None, domain: str = errors.DOMAIN, reason: str = "CONCURRENCY_LIMIT"
) -> status_pb2.Status:
    details: list[Any] = [
        error_details_pb2.ErrorInfo(
            reason=reason, domain=domain, metadata={"limit": "max_concurrent_requests"}
        ),
        error_details_pb2.QuotaFailure(
            violations=[
                error_details_pb2.QuotaFailure.Violation(
                    subject="server", description="max_concurrent_requests"
                )
            ]
        ),
    ]
    if retry_delay is not None:
        delay = duration_pb2.Duration()
        delay.FromNanoseconds(int(retry_delay * 1e9))
        details.append(error_details_pb2.RetryInfo(retry_delay=delay))
    return rich_status(grpc.StatusCode.RESOURCE_EXHAUSTED, "concurrency: at the limit", *details)


class Refusal(grpc.RpcError):
    """A blocking call's error as grpcio raises it: code, message and trailing metadata."""

    def __init__(self, code: grpc.StatusCode, message: str, trailer: Any = ()) -> None:
        super().__init__(message)
        self._code, self._message, self._trailer = code, message, tuple(trailer)

    def code(self) -> grpc.StatusCode:
        return self._code

    def details(self) -> str:
        return self._message

    def trailing_metadata(self) -> Any:
        return self._trailer


def refusal(status: status_pb2.Status) -> Refusal:
    """The error a blocking call raises when the server answers ``status`` (as
    ``rpc_status.to_status`` makes a server's)."""
    served = rpc_status.to_status(status)
    return Refusal(served.code, served.details, served.trailing_metadata)


def aio_refusal(status: status_pb2.Status) -> grpc.aio.AioRpcError:
    served = rpc_status.to_status(status)
    return grpc.aio.AioRpcError(
        served.code,
        grpc.aio.Metadata(),
        grpc.aio.Metadata(*served.trailing_metadata),
        served.details,
    )


def test_details_are_decoded_from_blocking_and_asyncio_errors_alike() -> None:
    status = rich_status(
        grpc.StatusCode.INVALID_ARGUMENT,
        "checks[3].subject_id: must not be empty",
        error_details_pb2.BadRequest(
            field_violations=[
                error_details_pb2.BadRequest.FieldViolation(
                    field="checks[3].subject_id", description="must not be empty"
                )
            ]
        ),
        error_details_pb2.ErrorInfo(
            reason="INVALID_FIELD", domain="assent", metadata={"field": "checks[3].subject_id"}
        ),
    )
    for error in (refusal(status), aio_refusal(status)):
        found = errors.details(error)
        assert found.code == grpc.StatusCode.INVALID_ARGUMENT
        assert found.message == "checks[3].subject_id: must not be empty"
        assert found.field_violations == (("checks[3].subject_id", "must not be empty"),)
        assert found.field_violations[0].field == "checks[3].subject_id"
        assert (found.reason, found.domain) == ("INVALID_FIELD", "assent")
        assert found.metadata == {"field": "checks[3].subject_id"}
        assert found.retry_delay is None
        assert found.status == status


def test_every_kind_of_detail_is_decoded() -> None:
    precondition = rich_status(
        grpc.StatusCode.FAILED_PRECONDITION,
        "subject_id: deleted",
        error_details_pb2.PreconditionFailure(
            violations=[
                error_details_pb2.PreconditionFailure.Violation(
                    type="SUBJECT_DELETED", subject="subject_id", description="stays deleted"
                )
            ]
        ),
    )
    assert errors.details(refusal(precondition)).precondition_violations == (
        ("SUBJECT_DELETED", "subject_id", "stays deleted"),
    )
    shed = errors.details(aio_refusal(shed_status(0.25)))
    assert shed.retry_delay == 0.25
    assert shed.quota_violations == (("server", "max_concurrent_requests"),)
    assert shed.reason == "CONCURRENCY_LIMIT"


def test_an_error_without_details_or_with_contradicting_ones_gives_only_its_code() -> None:
    bare = errors.details(Refusal(grpc.StatusCode.RESOURCE_EXHAUSTED, "message too large"))
    assert bare == errors.ErrorDetails(
        code=grpc.StatusCode.RESOURCE_EXHAUSTED, message="message too large"
    )
    # A trailer whose Status says something else than the error (rewritten on the way).
    served = rpc_status.to_status(shed_status(0.1))
    rewritten = Refusal(
        grpc.StatusCode.UNAVAILABLE, "no healthy upstream", served.trailing_metadata
    )
    assert errors.details(rewritten).retry_delay is None
    garbled = Refusal(
        grpc.StatusCode.INTERNAL, "x", [("grpc-status-details-bin", b"\xff not a status")]
    )
    assert errors.details(garbled).status is None
    assert errors.details(ValueError("not a gRPC error")).code is None


@pytest.mark.parametrize(
    ("error", "read_only", "retried"),
    [
        # UNAVAILABLE: reads only, as before.
        (Refusal(grpc.StatusCode.UNAVAILABLE, "down"), True, True),
        (Refusal(grpc.StatusCode.UNAVAILABLE, "down"), False, False),
        # Shed by assent with a RetryInfo: reads and writes alike.
        (refusal(shed_status(0.05)), True, True),
        (refusal(shed_status(0.05)), False, True),
        # Without RetryInfo (a message over a size limit), from another domain, or asked to
        # wait longer than the client waits: not retried.
        (Refusal(grpc.StatusCode.RESOURCE_EXHAUSTED, "too large"), True, False),
        (refusal(shed_status(None)), False, False),
        (refusal(shed_status(0.05, domain="proxy.example")), False, False),
        (refusal(shed_status(30.0)), True, False),
        (Refusal(grpc.StatusCode.INVALID_ARGUMENT, "subject_id: empty"), True, False),
    ],
)
def test_which_refusals_are_retried(error: grpc.RpcError, read_only: bool, retried: bool) -> None:
    def pause(attempt: int, deadline: float | None = None) -> float | None:
        return pause_before_retry(
            error, attempt=attempt, attempts=4, read_only=read_only, deadline=deadline
        )

    assert (pause(0) is not None) == retried
    # Never past the budget, nor past the deadline.
    assert pause(3) is None
    assert pause(0, deadline=time.monotonic() + 0.001) is None


def test_a_shed_call_waits_the_delay_asked_for_plus_jitter_up_to_max_pause() -> None:
    pauses = [
        pause_before_retry(
            refusal(shed_status(0.1)), attempt=1, attempts=4, read_only=False, deadline=None
        )
        for _ in range(200)
    ]
    assert all(pause is not None and 0.1 <= pause <= 0.15 for pause in pauses), pauses
    assert len({round(pause or 0, 5) for pause in pauses}) > 50, "the pauses are spread"
    # 200 ms at most by default, as the Rust client; a client may be told to wait longer.
    one_second = refusal(shed_status(1.0))
    assert pause_before_retry(
        one_second, attempt=0, attempts=4, read_only=False, deadline=None
    ) is None
    patient = pause_before_retry(
        one_second, attempt=0, attempts=4, read_only=False, deadline=None, max_pause=2.0
    )
    assert patient is not None and 1.0 <= patient <= 1.5


# --- the real server ---------------------------------------------------------------------------


def test_an_invalid_request_names_its_field_in_the_details(single_server: support.Server) -> None:
    with Client([single_server.address], timeout=5.0) as client:
        with pytest.raises(grpc.RpcError) as raised:
            client.check("", "MODEL_TRAINING")
        found = errors.details(raised.value)
        assert found.code == grpc.StatusCode.INVALID_ARGUMENT
        assert (found.reason, found.domain) == ("INVALID_FIELD", "assent")
        assert [violation.field for violation in found.field_violations] == ["subject_id"]
        assert found.metadata["field"] == "subject_id"
        assert found.retry_delay is None

        with pytest.raises(grpc.RpcError) as raised:
            client.check("errors-subject", pb.PURPOSE_UNSPECIFIED)
        assert errors.details(raised.value).field_violations[0].field == "purpose"

        with pytest.raises(grpc.RpcError) as raised:
            client.batch_check(
                [check_request("fine", "MEMORY"), check_request("not fine!", "MEMORY")]
            )
        found = errors.details(raised.value)
        assert [violation.field for violation in found.field_violations] == [
            "checks[1].subject_id"
        ], found
        assert found.message.startswith("checks[1].subject_id"), found.message


def test_a_write_to_a_deleted_subject_names_the_precondition(
    single_server: support.Server,
) -> None:
    with Client([single_server.address], timeout=5.0) as client:
        support.upsert(client, "errors-deleted")
        client.subjects.DeleteSubject(
            pb.DeleteSubjectRequest(subject_id="errors-deleted", actor=support.actor())
        )
        with pytest.raises(grpc.RpcError) as raised:
            support.upsert(client, "errors-deleted")
    found = errors.details(raised.value)
    assert found.code == grpc.StatusCode.FAILED_PRECONDITION
    assert (found.reason, found.domain) == ("SUBJECT_DELETED", "assent")
    assert [(violation.type, violation.subject) for violation in found.precondition_violations] == [
        ("SUBJECT_DELETED", "subject_id")
    ]


def test_asyncio_errors_carry_the_details_too(single_server: support.Server) -> None:
    async def scenario() -> errors.ErrorDetails:
        async with AsyncClient([single_server.address], timeout=5.0) as client:
            with pytest.raises(grpc.RpcError) as raised:
                await client.check("", "MEMORY")
            assert isinstance(raised.value, grpc.aio.AioRpcError)
            return errors.details(raised.value)

    found = asyncio.run(scenario())
    assert (found.reason, found.domain) == ("INVALID_FIELD", "assent")
    assert found.field_violations[0].field == "subject_id"


@pytest.fixture(scope="module")
def write_limited_server(assent_binary: str):
    """A server that admits one write per second per caller (a burst of one)."""
    server = support.Server({"ASSENT_WRITES_PER_SECOND_PER_CALLER": "1"})
    yield server
    server.stop()


WRITE_RATE_SHED = 'assent_limited_requests_total{limit="write_rate"}'


def test_a_write_shed_by_the_write_rate_is_retried_after_the_pause_asked_for(
    write_limited_server: support.Server,
) -> None:
    server = write_limited_server
    address = server.address
    # A client that waits out the server's pause (up to a second here, more than the default
    # 200 ms), one that tries once, and one with the defaults.
    with Client([address], timeout=5.0, max_pause=2.0) as patient, Client(
        [address], timeout=5.0, attempts=1
    ) as once, Client([address], timeout=5.0) as default:
        first_started = time.monotonic()
        support.upsert(patient, "shed-first")
        # Right after it, the next write is over the rate: refused before any work, with the
        # pause until the caller's next write is admitted.
        with pytest.raises(grpc.RpcError) as raised:
            support.upsert(once, "shed-second")
        found = errors.details(raised.value)
        assert found.code == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert (found.reason, found.domain) == ("WRITE_RATE_LIMIT", "assent")
        assert found.retry_delay is not None and 0.2 < found.retry_delay <= 1.0, found
        assert [violation.description for violation in found.quota_violations] == [
            "writes_per_second"
        ]
        # The defaults do not wait that long: the refusal comes back at once.
        started = time.monotonic()
        with pytest.raises(grpc.RpcError) as raised:
            support.upsert(default, "shed-second")
        assert errors.details(raised.value).reason == "WRITE_RATE_LIMIT"
        assert time.monotonic() - started < 0.2
        # The patient client: shed again, waits, and is admitted.
        shed_before = server.metrics().get(WRITE_RATE_SHED, 0.0)
        started = time.monotonic()
        support.upsert(patient, "shed-second")
        finished = time.monotonic()
        assert server.metrics().get(WRITE_RATE_SHED, 0.0) > shed_before, (
            "the retried write was shed at first"
        )
        # Admitted no sooner than a second after the first write (the rate allows no sooner),
        # so the client waited the pause out rather than trying again at once.
        assert finished - first_started >= 1.0, finished - first_started
        print(
            f"\na write shed with a retry delay of {found.retry_delay * 1000:.0f} ms, "
            f"retried and admitted in {(finished - started) * 1000:.0f} ms"
        )
        assert patient.get_subject("shed-second").subject_id == "shed-second"


def test_the_asyncio_client_retries_a_shed_write_too(
    write_limited_server: support.Server,
) -> None:
    server = write_limited_server

    async def upsert(client: AsyncClient, subject_id: str) -> pb.WriteResponse:
        return await client.subjects.UpsertSubject(  # type: ignore[no-any-return]
            pb.UpsertSubjectRequest(subject_id=subject_id, plan=pb.PLAN_FREE, actor=support.actor())
        )

    async def scenario() -> float:
        async with AsyncClient([server.address], timeout=5.0, max_pause=2.0) as client, AsyncClient(
            [server.address], timeout=5.0, attempts=1
        ) as once:
            await upsert(client, "async-shed-first")
            with pytest.raises(grpc.RpcError) as raised:
                await upsert(once, "async-shed-second")
            assert errors.details(raised.value).reason == "WRITE_RATE_LIMIT"
            started = time.monotonic()
            await upsert(client, "async-shed-second")
            return time.monotonic() - started

    shed_before = server.metrics().get(WRITE_RATE_SHED, 0.0)
    elapsed = asyncio.run(scenario())
    assert server.metrics().get(WRITE_RATE_SHED, 0.0) >= shed_before + 2
    assert elapsed > 0.05, elapsed


@pytest.fixture(scope="module")
def one_call_server(assent_binary: str):
    """A server that serves one call at a time (an open Watch holds its only slot)."""
    server = support.Server({"ASSENT_MAX_CONCURRENT_REQUESTS": "1"})
    yield server
    server.stop()


CONCURRENCY_SHED = 'assent_limited_requests_total{limit="concurrency"}'


def open_watch(client: Client) -> Any:
    """A Watch that has been admitted (its first heartbeat received): it holds a slot."""
    watch = client.changes.Watch(pb.WatchRequest(from_latest=True, heartbeat_interval_ms=100))
    next(watch)
    return watch


def test_a_check_shed_by_the_concurrency_limit_is_retried_until_a_slot_frees(
    one_call_server: support.Server,
) -> None:
    server = one_call_server
    with Client([server.address], timeout=5.0) as watcher, Client(
        [server.address], timeout=5.0, attempts=40
    ) as client:
        # Every try shed while the Watch holds the slot: the attempts run out, and the last
        # refusal is raised.
        watch = open_watch(watcher)
        with Client([server.address], timeout=5.0) as four_tries:
            shed_before = server.metrics().get(CONCURRENCY_SHED, 0.0)
            with pytest.raises(grpc.RpcError) as raised:
                four_tries.check("concurrency-subject", "MEMORY")
            found = errors.details(raised.value)
            assert found.code == grpc.StatusCode.RESOURCE_EXHAUSTED
            assert (found.reason, found.domain) == ("CONCURRENCY_LIMIT", "assent")
            assert found.retry_delay is not None and found.retry_delay <= 0.5, found
            assert server.metrics().get(CONCURRENCY_SHED, 0.0) - shed_before == 4
        # With the Watch closed 100 ms in, a Check with the attempts to wait that long out is
        # answered.
        closer = threading.Timer(0.1, watch.cancel)
        started = time.monotonic()
        closer.start()
        answer = client.check("concurrency-subject", "MEMORY")
        elapsed = time.monotonic() - started
        closer.join()
        assert answer.rule == "G1"
        assert elapsed >= 0.09, elapsed
        print(f"\na Check shed until a Watch closed 100 ms in: answered in {elapsed * 1000:.0f} ms")


def test_a_resource_exhausted_without_retry_info_is_not_retried(
    single_server: support.Server,
) -> None:
    """The client's own refusal of an answer over its size limit: the read is not sent again."""
    channel = grpc.insecure_channel(
        single_server.address, options=[("grpc.max_receive_message_length", 64)]
    )
    with BalancedChannel([channel], None, 5.0) as balanced:
        with Client([single_server.address], timeout=5.0) as client:
            support.upsert(client, "errors-large-answer")
        subjects = subjects_pb2_grpc.SubjectsStub(balanced)
        method = "assent.v1.Subjects/GetSubject"
        before = single_server.calls(method)
        with pytest.raises(grpc.RpcError) as raised:
            subjects.GetSubject(pb.GetSubjectRequest(subject_id="errors-large-answer"))
        assert raised.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert errors.details(raised.value).retry_delay is None
        assert single_server.calls(method) - before == 1
