"""The clients: :class:`Client` (blocking) and :class:`AsyncClient` (grpc.aio).

Both take every replica's address, spread calls over them and retry the calls that are safe to
send again (see :mod:`assent_client._balance`: a read refused with UNAVAILABLE, any call the
server shed with RESOURCE_EXHAUSTED and a ``RetryInfo``), carry ``authorization: Bearer
<token>`` on every call when given a token, and raise the server's gRPC status unchanged
(``grpc.RpcError``, whose ``details()`` names the field at fault, and whose ``google.rpc``
details :func:`assent_client.errors.details` decodes).

``check``, ``batch_check`` and ``get_subject`` are the common questions; every other call goes
through the generated stubs, ``client.decisions``, ``client.subjects``, ``client.changes``,
``client.policies``, ``client.audit``, ``client.rights`` and ``client.retention``, which share
the same replicas, token and retries.
"""

from __future__ import annotations

from typing import Any, Iterable, Sequence, Union

import grpc
import grpc.aio

from . import pb
from ._balance import ATTEMPTS, CHANNEL_OPTIONS, MAX_PAUSE, AsyncBalancedChannel, BalancedChannel
from ._names import PurposeLike, SourceLike, purpose_value, source_value
from ._proto import (
    audit_pb2_grpc,
    changes_pb2_grpc,
    decisions_pb2_grpc,
    policies_pb2_grpc,
    retention_pb2_grpc,
    rights_pb2_grpc,
    subjects_pb2_grpc,
)

#: A consistency requirement: a ``pb.Consistency``, or a revision token (``at_least_as_fresh``).
ConsistencyLike = Union["pb.Consistency", str, None]


def check_request(
    subject_id: str,
    purpose: PurposeLike,
    *,
    conversation_id: str | None = None,
    source: SourceLike | None = None,
    consistency: ConsistencyLike = None,
) -> pb.CheckRequest:
    """The ``CheckRequest`` of a question; ``purpose`` and ``source`` as values or names."""
    request = pb.CheckRequest(
        subject_id=subject_id,
        purpose=purpose_value(purpose),  # type: ignore[arg-type]
        source=source_value(source),  # type: ignore[arg-type]
    )
    if conversation_id is not None:
        request.conversation_id = conversation_id
    if isinstance(consistency, str):
        request.consistency.at_least_as_fresh = consistency
    elif consistency is not None:
        request.consistency.CopyFrom(consistency)
    return request


def _targets(targets: Sequence[str] | str) -> list[str]:
    if isinstance(targets, str):
        targets = [targets]
    found = [target for target in targets if target]
    if not found:
        raise ValueError("targets: at least one replica address (host:port) is needed")
    return found


class Client:
    """A blocking client of every replica in ``targets`` (``host:port`` each).

    ``timeout`` is the default deadline, in seconds, of every unary call (retries included);
    ``credentials`` makes the channels TLS (``grpc.ssl_channel_credentials(...)``), otherwise
    they are plaintext; ``attempts`` is how many times a unary call may be tried, the first
    included (1: never retried); ``max_pause`` the longest pause, in seconds, the client waits
    out when the server sheds a call and asks for one (a longer one: the refusal is raised).
    """

    def __init__(
        self,
        targets: Sequence[str],
        *,
        token: str | None = None,
        timeout: float = 1.0,
        credentials: grpc.ChannelCredentials | None = None,
        attempts: int = ATTEMPTS,
        max_pause: float = MAX_PAUSE,
    ) -> None:
        self.targets = _targets(targets)
        self.timeout = timeout
        channels = [
            grpc.secure_channel(target, credentials, options=CHANNEL_OPTIONS)
            if credentials is not None
            else grpc.insecure_channel(target, options=CHANNEL_OPTIONS)
            for target in self.targets
        ]
        self.channel = BalancedChannel(channels, token, timeout, attempts, max_pause)
        self.decisions = decisions_pb2_grpc.DecisionsStub(self.channel)
        self.subjects = subjects_pb2_grpc.SubjectsStub(self.channel)
        self.changes = changes_pb2_grpc.ChangesStub(self.channel)
        self.policies = policies_pb2_grpc.PoliciesStub(self.channel)
        self.audit = audit_pb2_grpc.AuditStub(self.channel)
        self.rights = rights_pb2_grpc.RightsStub(self.channel)
        self.retention = retention_pb2_grpc.RetentionStub(self.channel)

    def check(
        self,
        subject_id: str,
        purpose: PurposeLike,
        *,
        conversation_id: str | None = None,
        source: SourceLike | None = None,
        consistency: ConsistencyLike = None,
        timeout: float | None = None,
    ) -> pb.CheckResponse:
        """One decision. ``consistency``: a ``pb.Consistency`` or a revision token."""
        request = check_request(
            subject_id,
            purpose,
            conversation_id=conversation_id,
            source=source,
            consistency=consistency,
        )
        return self.decisions.Check(request, timeout=timeout)  # type: ignore[no-any-return]

    def batch_check(
        self, requests: Iterable[pb.CheckRequest], *, timeout: float | None = None
    ) -> list[pb.CheckResponse]:
        """Up to 1,000 checks, answered in the same order (``check_request`` builds them)."""
        response = self.decisions.BatchCheck(
            pb.BatchCheckRequest(checks=list(requests)), timeout=timeout
        )
        return list(response.results)

    def get_subject(self, subject_id: str, *, timeout: float | None = None) -> pb.Subject:
        """The subject's state and its effective decision for every purpose."""
        return self.subjects.GetSubject(  # type: ignore[no-any-return]
            pb.GetSubjectRequest(subject_id=subject_id), timeout=timeout
        )

    def close(self) -> None:
        self.channel.close()

    def __enter__(self) -> "Client":
        return self

    def __exit__(self, *exc_info: Any) -> None:
        self.close()


class AsyncClient:
    """The grpc.aio counterpart of :class:`Client`: the same calls, each awaited.

    Make it inside the event loop that will use it (grpc.aio channels belong to one loop).
    """

    def __init__(
        self,
        targets: Sequence[str],
        *,
        token: str | None = None,
        timeout: float = 1.0,
        credentials: grpc.ChannelCredentials | None = None,
        attempts: int = ATTEMPTS,
        max_pause: float = MAX_PAUSE,
    ) -> None:
        self.targets = _targets(targets)
        self.timeout = timeout
        channels = [
            grpc.aio.secure_channel(target, credentials, options=CHANNEL_OPTIONS)
            if credentials is not None
            else grpc.aio.insecure_channel(target, options=CHANNEL_OPTIONS)
            for target in self.targets
        ]
        self.channel = AsyncBalancedChannel(channels, token, timeout, attempts, max_pause)
        self.decisions = decisions_pb2_grpc.DecisionsStub(self.channel)
        self.subjects = subjects_pb2_grpc.SubjectsStub(self.channel)
        self.changes = changes_pb2_grpc.ChangesStub(self.channel)
        self.policies = policies_pb2_grpc.PoliciesStub(self.channel)
        self.audit = audit_pb2_grpc.AuditStub(self.channel)
        self.rights = rights_pb2_grpc.RightsStub(self.channel)
        self.retention = retention_pb2_grpc.RetentionStub(self.channel)

    async def check(
        self,
        subject_id: str,
        purpose: PurposeLike,
        *,
        conversation_id: str | None = None,
        source: SourceLike | None = None,
        consistency: ConsistencyLike = None,
        timeout: float | None = None,
    ) -> pb.CheckResponse:
        request = check_request(
            subject_id,
            purpose,
            conversation_id=conversation_id,
            source=source,
            consistency=consistency,
        )
        return await self.decisions.Check(request, timeout=timeout)  # type: ignore[no-any-return]

    async def batch_check(
        self, requests: Iterable[pb.CheckRequest], *, timeout: float | None = None
    ) -> list[pb.CheckResponse]:
        response = await self.decisions.BatchCheck(
            pb.BatchCheckRequest(checks=list(requests)), timeout=timeout
        )
        return list(response.results)

    async def get_subject(self, subject_id: str, *, timeout: float | None = None) -> pb.Subject:
        return await self.subjects.GetSubject(  # type: ignore[no-any-return]
            pb.GetSubjectRequest(subject_id=subject_id), timeout=timeout
        )

    async def close(self) -> None:
        await self.channel.close()

    async def __aenter__(self) -> "AsyncClient":
        return self

    async def __aexit__(self, *exc_info: Any) -> None:
        await self.close()
