"""The details of an error, as the server sends them: the standard ``google.rpc`` error model.

Besides its code and message, every error assent answers carries a ``google.rpc.Status`` in the
``grpc-status-details-bin`` trailer, with details a program can act on rather than read:

- an ``ErrorInfo`` (domain ``assent``): ``reason`` says which error it is, in upper snake case
  (``INVALID_FIELD``, ``SUBJECT_DELETED``, ``STORE_UNAVAILABLE``, ``WRITE_RATE_LIMIT``...), and
  ``metadata`` its particulars (``field``, ``limit``, ``caller``);
- INVALID_ARGUMENT: a ``BadRequest`` whose field violation names the field at fault
  (``checks[3].subject_id``);
- FAILED_PRECONDITION: a ``PreconditionFailure`` (type: the reason; subject: the field);
- RESOURCE_EXHAUSTED, a call shed before any work (the server's concurrency limit, the caller's
  write rate or open streams): a ``QuotaFailure`` naming the limit and a ``RetryInfo`` with the
  pause before trying again (the client waits it out and retries, see
  :mod:`assent_client._balance`);
- UNAVAILABLE: a ``RetryInfo`` when trying again after a pause is safe.

::

    from assent_client import errors

    try:
        client.check(subject_id, "MODEL_TRAINING")
    except grpc.RpcError as error:
        found = errors.details(error)
        if found.reason == "INVALID_FIELD":
            print(found.field_violations[0].field)

:func:`details` takes the ``grpc.RpcError`` of the blocking client and the
``grpc.aio.AioRpcError`` of the asyncio one alike.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping, NamedTuple, TypeVar

import grpc
from google.protobuf import any_pb2
from google.protobuf.message import DecodeError, Message
from google.rpc import error_details_pb2, status_pb2
from grpc_status import rpc_status

#: The ``ErrorInfo.domain`` of the errors assent itself sends.
DOMAIN = "assent"


class FieldViolation(NamedTuple):
    """A field of the request at fault (``BadRequest.FieldViolation``)."""

    field: str
    description: str


class PreconditionViolation(NamedTuple):
    """A precondition the call did not meet (``PreconditionFailure.Violation``)."""

    type: str
    subject: str
    description: str


class QuotaViolation(NamedTuple):
    """A limit the call ran into (``QuotaFailure.Violation``): ``subject`` is ``server`` or
    ``caller:<name>``, ``description`` the setting (``writes_per_second``)."""

    subject: str
    description: str


@dataclass(frozen=True)
class ErrorDetails:
    """What an error says, decoded. Every part is empty (or None) when the error did not carry
    it: an error made by gRPC itself (a deadline, a refused connection, a message over the size
    limit) carries none of them."""

    #: The status code, and the message (``details()`` of the error).
    code: grpc.StatusCode | None = None
    message: str = ""
    #: The ``ErrorInfo``: which error it is, who says so (``assent``), and its particulars.
    reason: str | None = None
    domain: str | None = None
    metadata: Mapping[str, str] = field(default_factory=dict)
    #: ``BadRequest``: the fields of the request at fault.
    field_violations: tuple[FieldViolation, ...] = ()
    #: ``PreconditionFailure``: the preconditions not met.
    precondition_violations: tuple[PreconditionViolation, ...] = ()
    #: ``QuotaFailure``: the limits the call ran into.
    quota_violations: tuple[QuotaViolation, ...] = ()
    #: ``RetryInfo``: seconds to wait before trying again; None when it is not said.
    retry_delay: float | None = None
    #: The ``google.rpc.Status`` itself, for details not decoded above (None when absent).
    status: status_pb2.Status | None = None


def details(error: BaseException) -> ErrorDetails:
    """The details ``error`` carries (a ``grpc.RpcError`` or ``grpc.aio.AioRpcError``).

    An error without them, or whose ``google.rpc.Status`` contradicts its own code or message
    (something between the server and the client rewrote one of them), gives an
    :class:`ErrorDetails` with only the code and message.
    """
    code, message = _code_and_message(error)
    status = _rich_status(error)
    if status is None:
        return ErrorDetails(code=code, message=message)
    decoded: dict[str, Any] = {}
    field_violations: list[FieldViolation] = []
    precondition_violations: list[PreconditionViolation] = []
    quota_violations: list[QuotaViolation] = []
    for detail in status.details:
        info = _unpack(detail, error_details_pb2.ErrorInfo)
        if info is not None:
            decoded.update(reason=info.reason, domain=info.domain, metadata=dict(info.metadata))
        bad_request = _unpack(detail, error_details_pb2.BadRequest)
        if bad_request is not None:
            field_violations.extend(
                FieldViolation(violation.field, violation.description)
                for violation in bad_request.field_violations
            )
        failure = _unpack(detail, error_details_pb2.PreconditionFailure)
        if failure is not None:
            precondition_violations.extend(
                PreconditionViolation(violation.type, violation.subject, violation.description)
                for violation in failure.violations
            )
        quota = _unpack(detail, error_details_pb2.QuotaFailure)
        if quota is not None:
            quota_violations.extend(
                QuotaViolation(violation.subject, violation.description)
                for violation in quota.violations
            )
        retry = _unpack(detail, error_details_pb2.RetryInfo)
        if retry is not None and retry.HasField("retry_delay"):
            decoded["retry_delay"] = max(retry.retry_delay.ToNanoseconds(), 0) / 1e9
    return ErrorDetails(
        code=code,
        message=message,
        field_violations=tuple(field_violations),
        precondition_violations=tuple(precondition_violations),
        quota_violations=tuple(quota_violations),
        status=status,
        **decoded,
    )


_Detail = TypeVar("_Detail", bound=Message)


def _unpack(detail: any_pb2.Any, kind: type[_Detail]) -> _Detail | None:
    """``detail`` as a ``kind``, or None when it is another message (or not a valid one)."""
    if not detail.Is(kind.DESCRIPTOR):
        return None
    message = kind()
    try:
        return message if detail.Unpack(message) else None
    except DecodeError:
        return None


def _code_and_message(error: BaseException) -> tuple[grpc.StatusCode | None, str]:
    try:
        code = error.code()  # type: ignore[attr-defined]
        message = error.details()  # type: ignore[attr-defined]
    except (AttributeError, TypeError):
        return None, ""
    return code, message or ""


def _rich_status(error: BaseException) -> status_pb2.Status | None:
    """The ``google.rpc.Status`` of the trailer. ``rpc_status.from_call`` reads it from either
    kind of error: a ``grpc.aio.AioRpcError``'s ``trailing_metadata()`` is, like the blocking
    error's, a plain method (only a live ``grpc.aio`` call's needs awaiting)."""
    if not isinstance(error, grpc.RpcError):
        return None
    try:
        return rpc_status.from_call(error)  # type: ignore[arg-type]
    except (AttributeError, TypeError, ValueError, DecodeError):
        # No trailer to read (an error raised before the call had one), a trailer that is not a
        # Status, or one that contradicts the error's code or message.
        return None
