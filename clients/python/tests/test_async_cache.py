"""AsyncLocalCache held to the key rules of docs/clients.md: the Watch lag, the staleness
bound, resuming after a reconnect, WhenStale.DENY and a consent expiry without an event.

As in test_cache.py: two replicas on a database and a Redis prefix of this module's own,
replica A answers the misses and serves the Watch (through a TCP proxy where a test cuts it:
``watch_client``), every write goes through replica B, and the consent-expiry sweep is off.
Each test runs its own event loop (``asyncio.run``).
"""

from __future__ import annotations

import asyncio
import time
import uuid
from typing import Iterator

import pytest

import support
from assent_client import AsyncClient, AsyncLocalCache, WhenStale, pb
from assent_client.cache import revision_number

HEARTBEAT = 0.1
STALE_AFTER = 3 * HEARTBEAT
#: The staleness bound of the tests that are not about it (see test_cache.py).
RELAXED = 1.0
TRAINING = pb.PURPOSE_MODEL_TRAINING
EMAIL = pb.PURPOSE_MARKETING_EMAIL


@pytest.fixture(scope="module")
def cluster(assent_binary: str) -> Iterator[support.Cluster]:
    cluster = support.Cluster(replicas=2, settings={"ASSENT_CONSENT_EXPIRY_SWEEP_MS": "0"})
    yield cluster
    cluster.stop()


@pytest.fixture
def proxy(cluster: support.Cluster) -> Iterator[support.FaultProxy]:
    proxy = support.FaultProxy(cluster.replicas[0].address)
    yield proxy
    proxy.close()


def unique(name: str) -> str:
    return f"{name}-{uuid.uuid4().hex[:8]}"


class Replicas:
    """The clients of one test's event loop: ``reader`` (A), ``writer`` (B) and, when a proxy
    is given, ``watch`` (A through the proxy)."""

    def __init__(self, cluster: support.Cluster, proxy: support.FaultProxy | None = None) -> None:
        self.reader = AsyncClient([cluster.replicas[0].address], timeout=5.0)
        self.writer = AsyncClient([cluster.replicas[1].address], timeout=5.0)
        self.watch = AsyncClient([proxy.address], timeout=5.0) if proxy else None

    async def close(self) -> None:
        for client in (self.reader, self.writer, self.watch):
            if client is not None:
                await client.close()

    async def upsert(self, subject_id: str, plan: int = pb.PLAN_FREE) -> pb.WriteResponse:
        return await self.writer.subjects.UpsertSubject(
            pb.UpsertSubjectRequest(subject_id=subject_id, plan=plan, actor=support.actor())
        )

    async def choose(
        self, subject_id: str, purpose: int, choice: int, expires_at: float | None = None
    ) -> pb.WriteResponse:
        request = pb.SetChoiceRequest(
            subject_id=subject_id, purpose=purpose, choice=choice, actor=support.actor()
        )
        if expires_at is not None:
            request.expires_at.FromNanoseconds(int(expires_at * 1e9))
        return await self.writer.subjects.SetChoice(request)


async def held(
    cache: AsyncLocalCache, subject_id: str, purpose: int, decision: int, **question
) -> pb.CheckResponse:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + 5
    while True:
        answer = await cache.check(subject_id, purpose, **question)
        if answer.from_memory and answer.response.decision == decision:
            return answer.response
        assert time.monotonic() < deadline, f"{subject_id}: never held {decision} in memory"
        await asyncio.sleep(0.001)


async def check_while_fresh(cache: AsyncLocalCache, subject_id: str, purpose: int):  # type: ignore[no-untyped-def]
    """A check made while the cache is fresh (made again if a late heartbeat had it stale)."""
    for _ in range(20):
        assert await cache.wait_fresh(10), "the cache did not become fresh"
        stale = cache.stats().stale_answers
        answer = await cache.check(subject_id, purpose)
        if cache.stats().stale_answers == stale:
            return answer
    raise AssertionError("the cache kept going stale")


def test_a_write_through_another_replica_flips_the_cached_answer_within_the_watch_lag(
    cluster: support.Cluster,
) -> None:
    async def scenario() -> list[float]:
        replicas = Replicas(cluster)
        subject = unique("async-lag")
        await replicas.upsert(subject)
        lags = []
        async with AsyncLocalCache(replicas.reader, heartbeat_interval=HEARTBEAT) as cache:
            assert await cache.wait_fresh(10)
            expected, choice = pb.DECISION_ALLOW, pb.CHOICE_GRANTED
            for trial in range(100):
                await held(cache, subject, TRAINING, expected)
                choice = pb.CHOICE_REFUSED if choice == pb.CHOICE_GRANTED else pb.CHOICE_GRANTED
                expected = pb.DECISION_DENY if choice == pb.CHOICE_REFUSED else pb.DECISION_ALLOW
                await replicas.choose(subject, TRAINING, choice)
                written = time.perf_counter()
                while (await cache.check(subject, TRAINING)).response.decision != expected:
                    assert time.perf_counter() - written < 5, f"trial {trial}: never flipped"
                    # A hit never yields to the loop: let the Watch task run.
                    await asyncio.sleep(0)
                lags.append(time.perf_counter() - written)
        await replicas.close()
        return lags

    lags = sorted(asyncio.run(scenario()))
    p50, p99 = support.percentile(lags, 0.5), support.percentile(lags, 0.99)
    print(
        f"\nasync: write through B -> cache on A shows it, {len(lags)} trials: "
        f"p50 {p50 * 1000:.1f} ms, p99 {p99 * 1000:.1f} ms, max {lags[-1] * 1000:.1f} ms"
    )
    assert p99 < 1.0


def test_no_stale_allow_once_the_staleness_bound_has_passed(
    cluster: support.Cluster, proxy: support.FaultProxy
) -> None:
    """1,000 cached ALLOWs (20 subjects x 50 conversations), the Watch swallowed, every
    subject opted out through B: past ``stale_after``, no stale ALLOW and nothing from memory."""

    async def scenario() -> tuple[int, int]:
        replicas = Replicas(cluster, proxy)
        subjects = [unique(f"async-stale-{index}") for index in range(20)]
        conversations = [f"conv-{index}" for index in range(50)]
        for subject in subjects:
            await replicas.upsert(subject)
        async with AsyncLocalCache(
            replicas.reader, heartbeat_interval=HEARTBEAT, watch_client=replicas.watch
        ) as cache:
            assert await cache.wait_fresh(10)
            for subject in subjects:
                for conversation in conversations:
                    answer = await cache.check(subject, TRAINING, conversation_id=conversation)
                    assert answer.response.decision == pb.DECISION_ALLOW
            for _ in range(5):
                held_answers = 0
                for subject in subjects:
                    for conversation in conversations:
                        answer = await cache.check(subject, TRAINING, conversation_id=conversation)
                        held_answers += answer.from_memory
                if held_answers == 1_000:
                    break
            assert held_answers == 1_000
            proxy.swallow()
            cut = time.monotonic()
            last = None
            for subject in subjects:
                last = await replicas.choose(subject, TRAINING, pb.CHOICE_REFUSED)
            assert last is not None
            await replicas.reader.check(subjects[-1], TRAINING, consistency=last.revision)
            await asyncio.sleep(max(0.0, cut + STALE_AFTER + 0.05 - time.monotonic()))
            assert not cache.fresh()
            stale_allows = from_memory = 0
            for subject in subjects:
                for conversation in conversations:
                    answer = await cache.check(subject, TRAINING, conversation_id=conversation)
                    stale_allows += answer.response.decision == pb.DECISION_ALLOW
                    from_memory += answer.from_memory
            proxy.forward()
            assert await cache.wait_fresh(10), "the Watch did not come back"
            for subject in subjects:
                assert (await held(cache, subject, TRAINING, pb.DECISION_DENY)).rule == "T5"
        await replicas.close()
        return stale_allows, from_memory

    stale_allows, from_memory = asyncio.run(scenario())
    print(
        f"\nasync: 1,000 checks past the bound: {stale_allows} stale ALLOWs, {from_memory} from memory"
    )
    assert stale_allows == 0
    assert from_memory == 0


def test_a_reconnect_catches_up_from_its_last_revision(
    cluster: support.Cluster, proxy: support.FaultProxy
) -> None:
    async def scenario() -> None:
        replicas = Replicas(cluster, proxy)
        x, y = unique("async-resume-x"), unique("async-resume-y")
        await replicas.upsert(x)
        await replicas.upsert(y)
        async with AsyncLocalCache(
            replicas.reader,
            heartbeat_interval=HEARTBEAT,
            stale_after=RELAXED,
            watch_client=replicas.watch,
        ) as cache:
            assert await cache.wait_fresh(10)
            await held(cache, x, TRAINING, pb.DECISION_ALLOW)
            await held(cache, y, TRAINING, pb.DECISION_ALLOW)
            proxy.reset()
            deadline = time.monotonic() + 2
            while cache.fresh():
                assert time.monotonic() < deadline, "the cut Watch still looks fresh"
                await asyncio.sleep(0.005)
            await replicas.choose(x, TRAINING, pb.CHOICE_REFUSED)
            proxy.forward()
            assert await cache.wait_fresh(10), "the Watch did not come back"
            x_answer = await cache.check(x, TRAINING)
            assert not x_answer.from_memory
            assert x_answer.response.rule == "T5"
            y_answer = await check_while_fresh(cache, y, TRAINING)
            assert y_answer.from_memory, "Y was forgotten: the cache started over"
            assert cache.stats().reconnects >= 1
        await replicas.close()

    asyncio.run(scenario())


def test_when_stale_deny_answers_deny_without_asking(
    cluster: support.Cluster, proxy: support.FaultProxy
) -> None:
    async def scenario() -> None:
        replicas = Replicas(cluster, proxy)
        subject = unique("async-deny")
        await replicas.upsert(subject)
        async with AsyncLocalCache(
            replicas.reader,
            heartbeat_interval=HEARTBEAT,
            when_stale=WhenStale.DENY,
            watch_client=replicas.watch,
        ) as cache:
            assert await cache.wait_fresh(10)
            await held(cache, subject, TRAINING, pb.DECISION_ALLOW)
            proxy.swallow()
            await asyncio.sleep(STALE_AFTER + 0.05)
            misses = cache.stats().misses
            answer = await cache.check(subject, TRAINING)
            assert not answer.from_memory
            assert answer.response.decision == pb.DECISION_DENY
            assert answer.response.reason == pb.REASON_STATE_UNAVAILABLE
            assert answer.response.degraded and answer.response.rule == ""
            assert cache.stats().misses == misses
            proxy.forward()
            assert (await check_while_fresh(cache, subject, TRAINING)).from_memory
        await replicas.close()

    asyncio.run(scenario())


def test_a_consent_expiry_is_honoured_without_an_event(cluster: support.Cluster) -> None:
    async def scenario() -> tuple[float, float]:
        replicas = Replicas(cluster)
        subject = unique("async-expiring")
        await replicas.upsert(subject)
        async with AsyncLocalCache(
            replicas.reader, heartbeat_interval=HEARTBEAT, stale_after=RELAXED
        ) as cache:
            assert await cache.wait_fresh(10)
            expires = time.time() + 1.5
            written = await replicas.choose(subject, EMAIL, pb.CHOICE_GRANTED, expires_at=expires)
            # The write's own event must not be what ends the ALLOW's use.
            target = revision_number(written.revision) or 0
            while (revision_number(cache.stats().revision) or 0) < target:
                await asyncio.sleep(0.002)
            assert (await held(cache, subject, EMAIL, pb.DECISION_ALLOW)).rule == "E1"
            before = cache.stats()
            while True:
                answer = await cache.check(subject, EMAIL)
                now = time.time()
                if answer.response.decision == pb.DECISION_DENY:
                    break
                assert answer.from_memory or cache.stats().stale_answers > before.stale_answers
                assert now < expires + 1
                await asyncio.sleep(0.001)
            after = cache.stats()
            assert answer.response.rule == "E2" and not answer.from_memory
            assert after.expirations == before.expirations + 1
            assert after.invalidations == before.invalidations
        await replicas.close()
        return now, expires

    now, expires = asyncio.run(scenario())
    assert expires <= now < expires + 0.2
