"""The client against real replicas: answers, errors, the spreading of calls over replicas, the
retries of read-only calls when a replica is stopped, and the bearer token.

Two replicas on one PostgreSQL database and one Redis prefix, made for this module.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import time

import grpc
import pytest

import support
from assent_client import AsyncClient, Client, LocalCache, check_request, pb

CHECK = "assent.v1.Decisions/Check"


@pytest.fixture(scope="module")
def cluster(assent_binary: str):
    cluster = support.Cluster(replicas=2)
    yield cluster
    cluster.stop()


@pytest.fixture(scope="module")
def client(cluster: support.Cluster):
    with Client([server.address for server in cluster.replicas], timeout=5.0) as client:
        yield client


@pytest.fixture(scope="module")
def stopped_replica(cluster: support.Cluster) -> str:
    """The address of a replica of the cluster that served and was then stopped (SIGTERM)."""
    server = cluster.add_replica()
    with Client([server.address], timeout=5.0) as client:
        support.upsert(client, "served-before-stopping")
    cluster.replicas.remove(server)
    server.stop()
    return server.address


def test_check_takes_purposes_and_sources_by_value_or_name(client: Client) -> None:
    revision = support.upsert(client, "client-basics", pb.PLAN_FREE)
    spellings = [
        pb.PURPOSE_MODEL_TRAINING,
        "MODEL_TRAINING",
        "model_training",
        "PURPOSE_MODEL_TRAINING",
    ]
    for purpose in spellings:
        answer = client.check("client-basics", purpose, consistency=revision)
        assert (answer.decision, answer.rule) == (pb.DECISION_ALLOW, "T6"), purpose
        assert answer.purpose == pb.PURPOSE_MODEL_TRAINING
        assert answer.revision, "an answer names the revision it was computed from"
    about_conversation = client.check(
        "client-basics", "MODEL_TRAINING", conversation_id="conv-1", source="CONNECTOR"
    )
    assert about_conversation.conversation_id == "conv-1"
    assert (about_conversation.decision, about_conversation.rule) == (pb.DECISION_DENY, "T1")
    fully = client.check(
        "client-basics",
        pb.PURPOSE_MARKETING_EMAIL,
        consistency=pb.Consistency(fully_consistent=True),
    )
    assert (fully.decision, fully.rule) == (pb.DECISION_DENY, "E2")


def test_batch_check_and_get_subject(client: Client) -> None:
    # The next call may go to the other replica: ask it for an answer at least as fresh.
    revision = support.upsert(client, "client-batch", pb.PLAN_TEAM)
    results = client.batch_check(
        [
            check_request("client-batch", "MODEL_TRAINING", consistency=revision),
            check_request("client-batch", "SERVICE_DELIVERY", consistency=revision),
            check_request("never-seen-by-the-client-tests", "MEMORY"),
        ]
    )
    assert [(result.decision, result.rule) for result in results] == [
        (pb.DECISION_DENY, "T4"),
        (pb.DECISION_ALLOW, "D1"),
        (pb.DECISION_DENY, "G1"),
    ]
    subject = client.get_subject("client-batch")
    assert subject.plan == pb.PLAN_TEAM
    assert len(subject.effective) == len(pb.Purpose.values()) - 1


def test_errors_are_the_servers_status_naming_the_field(client: Client) -> None:
    with pytest.raises(grpc.RpcError) as raised:
        client.check("", "MODEL_TRAINING")
    assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert raised.value.details().startswith("subject_id"), raised.value.details()
    with pytest.raises(grpc.RpcError) as raised:
        client.check("client-errors", pb.PURPOSE_UNSPECIFIED)
    assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert raised.value.details().startswith("purpose"), raised.value.details()
    with pytest.raises(grpc.RpcError) as raised:
        client.batch_check([check_request("fine", "MEMORY"), check_request("not fine!", "MEMORY")])
    assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "1" in raised.value.details(), raised.value.details()
    # A purpose name that does not exist is refused before anything is sent.
    with pytest.raises(ValueError, match="purpose"):
        client.check("client-errors", "TRAINING_OF_MODELS")


def test_calls_are_spread_over_the_replicas(cluster: support.Cluster, client: Client) -> None:
    support.upsert(client, "client-spread")
    before = [server.calls(CHECK) for server in cluster.replicas]
    for _ in range(200):
        client.check("client-spread", "MEMORY")
    served = [server.calls(CHECK) - count for server, count in zip(cluster.replicas, before)]
    print(f"\n200 checks over two replicas: {served[0]:.0f} and {served[1]:.0f}")
    assert sum(served) == 200
    assert all(80 <= count <= 120 for count in served), served


def test_read_only_calls_are_retried_on_the_other_replica_and_writes_are_not(
    cluster: support.Cluster, stopped_replica: str
) -> None:
    alive = cluster.replicas[0].address
    with Client([stopped_replica, alive], timeout=5.0) as client:
        # The rotation starts with the stopped replica: the write goes there, fails, and is not
        # sent again (its answer might have been lost after it was applied).
        with pytest.raises(grpc.RpcError) as raised:
            support.upsert(client, "written-to-a-stopped-replica")
        assert raised.value.code() == grpc.StatusCode.UNAVAILABLE
    with Client([alive], timeout=5.0) as direct:
        assert direct.check("written-to-a-stopped-replica", "MEMORY").rule == "G1", (
            "the write was sent to the live replica too"
        )
        support.upsert(direct, "read-past-a-stopped-replica")
    with Client([stopped_replica, alive], timeout=5.0) as client:
        started = time.perf_counter()
        for _ in range(100):
            answer = client.check("read-past-a-stopped-replica", "MEMORY")
            assert answer.decision == pb.DECISION_ALLOW
        elapsed = time.perf_counter() - started
        assert client.get_subject("read-past-a-stopped-replica").plan == pb.PLAN_FREE
        assert (
            len(client.batch_check([check_request("read-past-a-stopped-replica", "MEMORY")])) == 1
        )
    print(f"\n100 checks with one of two replicas stopped: {elapsed * 1000:.0f} ms in all")


def test_a_call_fails_when_every_replica_is_down(stopped_replica: str) -> None:
    with Client([stopped_replica], timeout=5.0) as client:
        started = time.perf_counter()
        with pytest.raises(grpc.RpcError) as raised:
            client.check("anyone", "MEMORY")
        elapsed = time.perf_counter() - started
    assert raised.value.code() == grpc.StatusCode.UNAVAILABLE
    # Four tries, 10 + 20 + 40 ms apart: well under the deadline, not at once.
    assert 0.07 <= elapsed < 3.0, elapsed


def test_async_client_checks_retries_and_writes_once(
    cluster: support.Cluster, stopped_replica: str
) -> None:
    alive = cluster.replicas[1].address

    async def scenario() -> None:
        async with AsyncClient([stopped_replica, alive], timeout=5.0) as client:
            with pytest.raises(grpc.RpcError) as raised:
                await client.subjects.UpsertSubject(
                    pb.UpsertSubjectRequest(
                        subject_id="async-written-to-a-stopped-replica",
                        plan=pb.PLAN_FREE,
                        actor=support.actor(),
                    )
                )
            assert raised.value.code() == grpc.StatusCode.UNAVAILABLE
        async with AsyncClient([stopped_replica, alive], timeout=5.0) as client:
            answer = await client.check("async-written-to-a-stopped-replica", "MEMORY")
            assert answer.rule == "G1", "the write was sent to the live replica too"
            written = await client.subjects.UpsertSubject(
                pb.UpsertSubjectRequest(
                    subject_id="async-client", plan=pb.PLAN_PRO, actor=support.actor()
                )
            )
            for _ in range(20):
                answer = await client.check(
                    "async-client", "model_training", consistency=written.revision
                )
                assert (answer.decision, answer.rule) == (pb.DECISION_ALLOW, "T6")
            results = await client.batch_check([check_request("async-client", "MEMORY")])
            assert results[0].decision == pb.DECISION_ALLOW
            assert (await client.get_subject("async-client")).plan == pb.PLAN_PRO
            with pytest.raises(grpc.RpcError) as raised:
                await client.check("", "MEMORY")
            assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT
            assert raised.value.details().startswith("subject_id")

    asyncio.run(scenario())


# --- the bearer token -----------------------------------------------------------------------

SECRET = "a shared secret of the python client tests, 32+ characters"
ISSUER = "python-client-tests"
AUDIENCE = "assent"


def hs256_token(scopes: str) -> str:
    """A JWT signed with the server's HS256 secret (development only, as docs/security.md
    says), carrying ``scopes``."""

    def encode(part: bytes) -> str:
        return base64.urlsafe_b64encode(part).rstrip(b"=").decode()

    header = encode(json.dumps({"alg": "HS256", "typ": "JWT"}).encode())
    claims = encode(
        json.dumps(
            {
                "iss": ISSUER,
                "aud": AUDIENCE,
                "sub": "python-client",
                "exp": int(time.time()) + 600,
                "scope": scopes,
            }
        ).encode()
    )
    signature = hmac.new(SECRET.encode(), f"{header}.{claims}".encode(), hashlib.sha256).digest()
    return f"{header}.{claims}.{encode(signature)}"


@pytest.fixture(scope="module")
def authenticating_server(assent_binary: str):
    server = support.Server(
        {
            "ASSENT_JWT_HS256_SECRET": SECRET,
            "ASSENT_JWT_ISSUER": ISSUER,
            "ASSENT_JWT_AUDIENCE": AUDIENCE,
        }
    )
    yield server
    server.stop()


def test_every_call_carries_the_token(authenticating_server: support.Server) -> None:
    address = authenticating_server.address
    with Client([address]) as anonymous:
        with pytest.raises(grpc.RpcError) as raised:
            anonymous.check("token-subject", "MEMORY")
        assert raised.value.code() == grpc.StatusCode.UNAUTHENTICATED
    token = hs256_token("decisions:check subjects:write subjects:read changes:watch")
    with Client([address], token=token) as client:
        support.upsert(client, "token-subject")
        assert client.check("token-subject", "MEMORY").decision == pb.DECISION_ALLOW
        assert client.get_subject("token-subject").plan == pb.PLAN_FREE
        # The Watch of a cache carries it too: the cache becomes fresh and answers from memory.
        with LocalCache(client, heartbeat_interval=0.1) as cache:
            assert cache.wait_fresh(10), "the Watch never delivered a heartbeat"
            assert not cache.check("token-subject", "MEMORY").from_memory
            assert cache.check("token-subject", "MEMORY").from_memory
    with Client([address], token=hs256_token("decisions:check")) as narrow:
        with pytest.raises(grpc.RpcError) as raised:
            narrow.get_subject("token-subject")
        assert raised.value.code() == grpc.StatusCode.PERMISSION_DENIED
