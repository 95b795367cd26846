"""LocalCache held to the rules of docs/clients.md against two real replicas.

Replica A answers the cache's misses and serves its Watch; every write goes through replica B,
so a change reaches the cache only the way it would in production: B commits it to PostgreSQL,
A learns of it (Redis, the change log), A's Watch delivers it. Where a test cuts the Watch, it
goes through a TCP proxy in front of A (``watch_client``) while the misses still go straight to
A: a cut Watch must not stop the cache from asking the server, only from answering from memory.

The replicas run with the consent-expiry sweep off (``ASSENT_CONSENT_EXPIRY_SWEEP_MS=0``), so an
expiring choice produces no event: only ``valid_until`` can make the cache stop using an answer,
and with a replay limit of 200 changes (``ASSENT_WATCH_MAX_REPLAY``), so a Watch that missed
more is refused with FAILED_PRECONDITION.
"""

from __future__ import annotations

import random
import threading
import time
import uuid
from datetime import datetime, timezone
from typing import Iterator

import pytest

import support
from assent_client import Client, LocalCache, WhenStale, pb
from assent_client.cache import revision_number

HEARTBEAT = 0.1
STALE_AFTER = 3 * HEARTBEAT
#: The staleness bound of the tests that are not about it: a heartbeat can come 300 ms late on
#: this 2-core machine running the replicas, PostgreSQL and the tests at once, and a test that
#: asserts an answer came from memory must not fail for that.
RELAXED = 1.0
TRAINING = pb.PURPOSE_MODEL_TRAINING
EMAIL = pb.PURPOSE_MARKETING_EMAIL
MAX_REPLAY = 200


@pytest.fixture(scope="module")
def cluster(assent_binary: str) -> Iterator[support.Cluster]:
    cluster = support.Cluster(
        replicas=2,
        settings={
            "ASSENT_CONSENT_EXPIRY_SWEEP_MS": "0",
            "ASSENT_WATCH_MAX_REPLAY": str(MAX_REPLAY),
        },
    )
    yield cluster
    cluster.stop()


@pytest.fixture(scope="module")
def reader(cluster: support.Cluster) -> Iterator[Client]:
    """Replica A: the cache's misses (and Watch, unless a test proxies it)."""
    with Client([cluster.replicas[0].address], timeout=5.0) as client:
        yield client


@pytest.fixture(scope="module")
def writer(cluster: support.Cluster) -> Iterator[Client]:
    """Replica B: every write."""
    with Client([cluster.replicas[1].address], timeout=5.0) as client:
        yield client


@pytest.fixture
def proxy(cluster: support.Cluster) -> Iterator[support.FaultProxy]:
    """A proxy in front of replica A, for the Watch only."""
    proxy = support.FaultProxy(cluster.replicas[0].address)
    yield proxy
    proxy.close()


@pytest.fixture
def watch_client(proxy: support.FaultProxy) -> Iterator[Client]:
    with Client([proxy.address], timeout=5.0) as client:
        yield client


def unique(name: str) -> str:
    return f"{name}-{uuid.uuid4().hex[:8]}"


def wait_until(condition, timeout: float, message: str) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, message
        time.sleep(0.002)


def delivered(cache: LocalCache, written: pb.WriteResponse) -> None:
    """Waits for the cache's Watch to deliver a write (and so to forget what it changed)."""
    target = revision_number(written.revision)
    assert target is not None
    wait_until(
        lambda: (revision_number(cache.stats().revision) or 0) >= target,
        5,
        f"the Watch did not deliver {written.revision}",
    )


def held(
    cache: LocalCache, subject_id: str, purpose: int, decision: int, **question
) -> pb.CheckResponse:  # type: ignore[no-untyped-def]
    """Checks until the answer comes from memory with ``decision``; that answer."""
    deadline = time.monotonic() + 5
    while True:
        answer = cache.check(subject_id, purpose, **question)
        if answer.from_memory and answer.response.decision == decision:
            return answer.response
        assert time.monotonic() < deadline, (
            f"{subject_id}: never held {pb.Decision.Name(decision)} in memory; last answer "
            f"{answer.response.rule} from_memory={answer.from_memory}"
        )
        time.sleep(0.001)


def check_while_fresh(cache: LocalCache, subject_id: str, purpose: int, **question):  # type: ignore[no-untyped-def]
    """A check made while the cache is fresh (one made during a stale moment, a heartbeat
    late on a busy machine, is made again once fresh)."""
    for _ in range(20):
        assert cache.wait_fresh(10), "the cache did not become fresh"
        stale = cache.stats().stale_answers
        answer = cache.check(subject_id, purpose, **question)
        if cache.stats().stale_answers == stale:
            return answer
    raise AssertionError("the cache kept going stale")


def seconds(timestamp) -> float:  # type: ignore[no-untyped-def]
    return timestamp.seconds + timestamp.nanos / 1e9


def test_answers_are_held_forgotten_by_a_change_and_counted(reader: Client, writer: Client) -> None:
    subject = unique("basics")
    support.upsert(writer, subject)
    with LocalCache(
        reader, heartbeat_interval=HEARTBEAT, stale_after=RELAXED, capacity=10
    ) as cache:
        assert not cache.fresh(), "fresh before the Watch said it had caught up"
        assert cache.wait_fresh(10)
        first = cache.check(subject, "MODEL_TRAINING", conversation_id="c1")
        assert not first.from_memory
        second = check_while_fresh(cache, subject, TRAINING, conversation_id="c1")
        assert second.from_memory
        # A cached answer repeats the server's, decision id included: logged once, when made.
        assert second.response.decision_id == first.response.decision_id
        assert (second.response.decision, second.response.rule) == (pb.DECISION_ALLOW, "T6")
        # Keyed by conversation and source: another question is another miss.
        assert not cache.check(subject, TRAINING, conversation_id="c2").from_memory
        assert not cache.check(
            subject, TRAINING, conversation_id="c1", source="CONNECTOR"
        ).from_memory
        assert (
            cache.check(subject, TRAINING, conversation_id="c1", source="CONNECTOR").response.rule
            == "T1"
        )
        before = cache.stats()
        support.set_choice(writer, subject, TRAINING, pb.CHOICE_REFUSED)
        wait_until(
            lambda: cache.stats().invalidations > before.invalidations,
            5,
            "the change was not delivered",
        )
        after = cache.check(subject, TRAINING, conversation_id="c1")
        assert not after.from_memory
        assert (after.response.decision, after.response.rule) == (pb.DECISION_DENY, "T5")
        # At most `capacity` subjects are held.
        for index in range(25):
            cache.check(f"{subject}-{index}", "MEMORY")
        stats = cache.stats()
        assert stats.subjects <= 10, stats
        assert stats.hits >= 1 and stats.misses >= 28, stats
        assert revision_number(stats.revision) is not None, stats
        assert stats.staleness < 1.0, stats


def watch_lags(
    cache: LocalCache, writer: Client, subject: str, trials: int, release_the_gil: bool
) -> list[float]:
    """Flips the subject's training choice through B ``trials`` times; for each write, the time
    from its return to the first cache answer that shows it (sorted). Each trial starts with
    the previous answer held in memory; once shown, an answer is never taken back."""
    lags = []
    expected, choice = pb.DECISION_ALLOW, pb.CHOICE_GRANTED
    for trial in range(trials):
        held(cache, subject, TRAINING, expected)
        choice = pb.CHOICE_REFUSED if choice == pb.CHOICE_GRANTED else pb.CHOICE_GRANTED
        expected = pb.DECISION_DENY if choice == pb.CHOICE_REFUSED else pb.DECISION_ALLOW
        support.set_choice(writer, subject, TRAINING, choice)
        written = time.perf_counter()
        while cache.check(subject, TRAINING).response.decision != expected:
            assert time.perf_counter() - written < 5, f"trial {trial}: never flipped"
            if release_the_gil:
                time.sleep(0)
        lags.append(time.perf_counter() - written)
        for _ in range(3):
            assert cache.check(subject, TRAINING).response.decision == expected
    return sorted(lags)


def test_a_write_through_another_replica_flips_the_cached_answer_within_the_watch_lag(
    reader: Client, writer: Client
) -> None:
    """300 writes through B, each timed from its return to the first cache answer that shows
    it, the cache polled in a tight loop that lets other threads run between polls
    (``time.sleep(0)``), as any caller doing I/O does.

    Then 50 more with a loop that never releases the GIL: the Watch's thread (and gRPC's) then
    get the interpreter only at its switch interval (5 ms), several times per message: that
    figure is printed, not held to the same bound, since it measures CPython's thread switching
    rather than the Watch."""
    subject = unique("lag")
    support.upsert(writer, subject)
    with LocalCache(reader, heartbeat_interval=HEARTBEAT) as cache:
        assert cache.wait_fresh(10)
        lags = watch_lags(cache, writer, subject, 300, release_the_gil=True)
        stats = cache.stats()
        spinning = watch_lags(cache, writer, subject, 50, release_the_gil=False)
    p50, p99 = support.percentile(lags, 0.50), support.percentile(lags, 0.99)
    print(
        f"\nwrite through B -> cache on A shows it, {len(lags)} trials: p50 {p50 * 1000:.1f} ms, "
        f"p99 {p99 * 1000:.1f} ms, max {lags[-1] * 1000:.1f} ms ({stats.hits} hits, "
        f"{stats.misses} misses, {stats.invalidations} invalidations)\n"
        f"the same with a poll loop that never releases the GIL, {len(spinning)} trials: "
        f"p50 {support.percentile(spinning, 0.5) * 1000:.1f} ms, "
        f"p99 {support.percentile(spinning, 0.99) * 1000:.1f} ms"
    )
    assert stats.invalidations >= 300
    assert p99 < 0.5, f"p99 {p99:.3f} s"


def test_no_stale_allow_once_the_staleness_bound_has_passed(
    reader: Client, writer: Client, proxy: support.FaultProxy, watch_client: Client
) -> None:
    """10,000 cached ALLOWs (100 subjects x 100 conversations); the Watch is swallowed by the
    proxy (nothing refused, nothing delivered); all 100 subjects opt out through B; past
    ``stale_after`` not one of the 10,000 checks is a stale ALLOW or comes from memory."""
    subjects = [unique(f"stale-{index}") for index in range(100)]
    conversations = [f"conv-{index}" for index in range(100)]
    for subject in subjects:
        support.upsert(writer, subject)
    with LocalCache(reader, heartbeat_interval=HEARTBEAT, watch_client=watch_client) as cache:
        assert cache.wait_fresh(10)
        for subject in subjects:
            for conversation in conversations:
                answer = cache.check(subject, TRAINING, conversation_id=conversation)
                assert answer.response.decision == pb.DECISION_ALLOW
        # Every answer is in memory (a pass made while a late heartbeat had the cache stale
        # asks the server instead: pass again).
        for _ in range(5):
            held_answers = sum(
                cache.check(subject, TRAINING, conversation_id=conversation).from_memory
                for subject in subjects
                for conversation in conversations
            )
            if held_answers == 10_000:
                break
        assert held_answers == 10_000
        proxy.swallow()
        cut = time.monotonic()
        last = None
        for subject in subjects:
            last = support.set_choice(writer, subject, TRAINING, pb.CHOICE_REFUSED)
        assert last is not None
        # Replica A itself has every opt-out (the server's freshness is not under test here).
        reader.check(subjects[-1], TRAINING, consistency=last.revision)
        while time.monotonic() < cut + STALE_AFTER + 0.05:
            time.sleep(0.01)
        assert not cache.fresh()
        before = cache.stats()
        stale_allows = from_memory = 0
        for subject in subjects:
            for conversation in conversations:
                answer = cache.check(subject, TRAINING, conversation_id=conversation)
                stale_allows += answer.response.decision == pb.DECISION_ALLOW
                from_memory += answer.from_memory
        after = cache.stats()
        print(
            f"\n10,000 checks after the cut and {after.staleness:.2f} s of silence: "
            f"{stale_allows} stale ALLOWs, {from_memory} from memory; "
            f"{after.reconnects} reconnects meanwhile"
        )
        assert stale_allows == 0
        assert from_memory == 0
        assert after.stale_answers - before.stale_answers == 10_000
        assert after.misses - before.misses == 10_000
        # The Watch comes back and resumes: the opt-outs are delivered, memory is right again.
        proxy.forward()
        assert cache.wait_fresh(10), "the Watch did not come back"
        for subject in subjects:
            response = held(cache, subject, TRAINING, pb.DECISION_DENY, conversation_id="conv-0")
            assert response.rule == "T5"


def test_a_consent_expiry_is_honoured_without_an_event(reader: Client, writer: Client) -> None:
    """A choice granted until an instant ~1.5 s ahead: the cached ALLOW is used until then and
    not after; the expiry sweep is off, so no event tells the cache."""
    subject = unique("expiring")
    support.upsert(writer, subject)
    with LocalCache(reader, heartbeat_interval=HEARTBEAT, stale_after=RELAXED) as cache:
        assert cache.wait_fresh(10)
        expires = time.time() + 1.5
        written = support.set_choice(writer, subject, EMAIL, pb.CHOICE_GRANTED, expires_at=expires)
        # The write's own event must not be what ends the ALLOW's use.
        delivered(cache, written)
        response = held(cache, subject, EMAIL, pb.DECISION_ALLOW)
        assert response.rule == "E1"
        assert abs(seconds(response.valid_until) - expires) < 0.001
        before = cache.stats()
        while True:
            answer = cache.check(subject, EMAIL)
            now = time.time()
            if answer.response.decision == pb.DECISION_DENY:
                break
            assert answer.from_memory or cache.stats().stale_answers > before.stale_answers
            assert now < expires + 1, "the expired ALLOW was still used"
            time.sleep(0.001)
        after = cache.stats()
    print(f"\nexpired choice: DENY {(now - expires) * 1000:.1f} ms after the expiry")
    assert now >= expires, "DENY before the choice expired"
    assert now - expires < 0.2
    assert not answer.from_memory
    assert answer.response.rule == "E2"
    assert after.expirations == before.expirations + 1
    assert after.invalidations == before.invalidations, "an event told the cache"


def policy_source(version: str, effective_from: float) -> str:
    """The built-in policy with IP geolocation denied on the free plan (rule I1), in force from
    ``effective_from``; no other test of this module asks about IP geolocation."""
    builtin = (support.REPOSITORY / "policies" / "2026-01-01.toml").read_text()
    instant = datetime.fromtimestamp(effective_from, tz=timezone.utc).strftime(
        "%Y-%m-%dT%H:%M:%S.%fZ"
    )
    source = (
        builtin.replace('version = "2026-01-01"', f'version = "{version}"', 1)
        .replace("effective_from = 2026-01-01", f"effective_from = {instant}", 1)
        .replace(
            'IP_GEOLOCATION = [\n  { rule = "I1", when = { choice = "REFUSED" } },\n  { rule = "I2" },\n]',
            'IP_GEOLOCATION = [\n  { rule = "I1", when = { plan = "FREE" } },\n  { rule = "I2" },\n]',
            1,
        )
    )
    assert source.count(version) == 1 and '{ rule = "I1", when = { plan = "FREE" } }' in source
    return source


def test_a_policy_versions_effective_date_is_honoured_without_an_event(
    reader: Client, writer: Client
) -> None:
    """A policy version applied now, in force 2 s later: its application forgets every answer
    (one event); the answers held afterwards are used until the effective date, not after."""
    subject = unique("policy")
    support.upsert(writer, subject)
    geolocation = pb.PURPOSE_IP_GEOLOCATION
    with LocalCache(reader, heartbeat_interval=HEARTBEAT, stale_after=RELAXED) as cache:
        assert cache.wait_fresh(10)
        held(cache, subject, geolocation, pb.DECISION_ALLOW)
        effective = time.time() + 2.0
        before_apply = cache.stats()
        applied = writer.policies.ApplyPolicy(
            pb.ApplyPolicyRequest(
                source=policy_source(unique("pytest"), effective), actor=support.actor()
            )
        )
        assert applied.changed
        wait_until(
            lambda: cache.stats().invalidations == before_apply.invalidations + 1,
            5,
            "the policy version was not delivered",
        )
        assert cache.stats().subjects == 0, "a policy version forgets every answer"
        response = held(cache, subject, geolocation, pb.DECISION_ALLOW)
        assert response.rule == "I2"
        assert response.HasField("valid_until"), (
            "replica A answered a Check at least as fresh as the policy_applied revision "
            "without the new version's effective date in valid_until: it had not installed the "
            "version yet, and the cache would use this ALLOW past the effective date"
        )
        assert abs(seconds(response.valid_until) - effective) < 0.001, response.valid_until
        before = cache.stats()
        while True:
            answer = cache.check(subject, geolocation)
            now = time.time()
            if answer.response.decision == pb.DECISION_DENY:
                break
            assert now < effective + 1, "the ALLOW was used past the new version's start"
            time.sleep(0.001)
        after = cache.stats()
    print(f"\nnew policy version: DENY {(now - effective) * 1000:.1f} ms after its effective date")
    assert now >= effective
    assert answer.response.rule == "I1" and not answer.from_memory
    assert after.expirations == before.expirations + 1
    assert after.invalidations == before.invalidations


def test_a_reconnect_catches_up_from_its_last_revision(
    reader: Client, writer: Client, proxy: support.FaultProxy, watch_client: Client
) -> None:
    """The Watch is reset while X changes through B; once it is back and fresh, X's answer is
    the new one while Y, unchanged, is still answered from memory: the cache resumed from its
    revision rather than starting over."""
    x, y = unique("resume-x"), unique("resume-y")
    support.upsert(writer, x)
    support.upsert(writer, y)
    with LocalCache(
        reader, heartbeat_interval=HEARTBEAT, stale_after=RELAXED, watch_client=watch_client
    ) as cache:
        assert cache.wait_fresh(10)
        held(cache, x, TRAINING, pb.DECISION_ALLOW)
        held(cache, y, TRAINING, pb.DECISION_ALLOW)
        proxy.reset()
        wait_until(lambda: not cache.fresh(), 2, "the cut Watch still looks fresh")
        support.set_choice(writer, x, TRAINING, pb.CHOICE_REFUSED)
        support.upsert(writer, x, pb.PLAN_PRO)
        # While cut: asked of the server, right, and not remembered.
        while_cut = cache.check(x, TRAINING)
        assert not while_cut.from_memory and while_cut.response.rule == "T5"
        proxy.forward()
        assert cache.wait_fresh(10), "the Watch did not come back"
        x_answer = cache.check(x, TRAINING)
        assert not x_answer.from_memory, "X's old answer survived its changes"
        assert (x_answer.response.decision, x_answer.response.rule) == (pb.DECISION_DENY, "T5")
        y_answer = check_while_fresh(cache, y, TRAINING)
        assert y_answer.from_memory, "Y was forgotten: the cache started over instead of resuming"
        assert y_answer.response.decision == pb.DECISION_ALLOW
        stats = cache.stats()
    assert stats.reconnects >= 1, stats


def test_a_watch_too_far_behind_forgets_everything_and_starts_from_the_latest(
    reader: Client, writer: Client, proxy: support.FaultProxy, watch_client: Client
) -> None:
    """More changes than the server replays happen while the Watch is cut: the server refuses
    to resume (FAILED_PRECONDITION), so the cache forgets every answer, unchanged subjects too,
    and watches from the latest revision."""
    busy, quiet = unique("resync-busy"), unique("resync-quiet")
    support.upsert(writer, busy)
    support.upsert(writer, quiet)
    with LocalCache(
        reader, heartbeat_interval=HEARTBEAT, stale_after=RELAXED, watch_client=watch_client
    ) as cache:
        assert cache.wait_fresh(10)
        held(cache, busy, EMAIL, pb.DECISION_DENY)
        held(cache, quiet, EMAIL, pb.DECISION_DENY)
        revision_before = revision_number(cache.stats().revision)
        proxy.reset()
        wait_until(lambda: not cache.fresh(), 2, "the cut Watch still looks fresh")
        choice = pb.CHOICE_REFUSED
        for _ in range(MAX_REPLAY + 20):
            choice = pb.CHOICE_GRANTED if choice == pb.CHOICE_REFUSED else pb.CHOICE_REFUSED
            support.set_choice(writer, busy, EMAIL, choice)
        proxy.forward()
        assert cache.wait_fresh(15), "the Watch did not start again from the latest revision"
        assert cache.stats().subjects == 0
        quiet_answer = cache.check(quiet, EMAIL)
        assert not quiet_answer.from_memory, "an answer survived a resync"
        busy_answer = cache.check(busy, EMAIL)
        assert busy_answer.response.rule == ("E1" if choice == pb.CHOICE_GRANTED else "E2")
        revision_after = revision_number(cache.stats().revision)
    assert revision_before is not None and revision_after is not None
    assert revision_after >= revision_before + MAX_REPLAY + 20


def test_when_stale_deny_answers_deny_without_asking(
    reader: Client, writer: Client, proxy: support.FaultProxy, watch_client: Client
) -> None:
    subject = unique("deny-when-stale")
    support.upsert(writer, subject)
    with LocalCache(
        reader, heartbeat_interval=HEARTBEAT, when_stale=WhenStale.DENY, watch_client=watch_client
    ) as cache:
        assert cache.wait_fresh(10)
        held(cache, subject, TRAINING, pb.DECISION_ALLOW)
        proxy.swallow()
        time.sleep(STALE_AFTER + 0.05)
        before = cache.stats()
        for question in (subject, unique("never-asked")):
            answer = cache.check(question, TRAINING)
            response = answer.response
            assert not answer.from_memory
            assert response.decision == pb.DECISION_DENY
            assert response.reason == pb.REASON_STATE_UNAVAILABLE
            assert response.degraded
            assert response.rule == ""
            assert response.subject_id == question and response.purpose == TRAINING
        after = cache.stats()
        assert after.misses == before.misses, "a stale check asked the server"
        assert after.stale_answers == before.stale_answers + 2
        proxy.forward()
        assert check_while_fresh(cache, subject, TRAINING).from_memory


def test_answers_fetched_during_a_change_are_not_remembered_stale(
    reader: Client, writer: Client
) -> None:
    """Writes through B and checks from four threads at once, on the same 10 subjects: once the
    Watch has delivered the last write, every subject's answer, from memory or not, is the last
    one written (the floors and at_least_as_fresh at work)."""
    subjects = [unique(f"race-{index}") for index in range(10)]
    for subject in subjects:
        support.upsert(writer, subject)
    last_choice = {subject: pb.CHOICE_UNSPECIFIED for subject in subjects}
    stop = threading.Event()
    errors: list[BaseException] = []
    with LocalCache(reader, heartbeat_interval=HEARTBEAT, stale_after=RELAXED) as cache:
        assert cache.wait_fresh(10)

        def hammer(seed: int) -> None:
            chooser = random.Random(seed)
            try:
                while not stop.is_set():
                    cache.check(chooser.choice(subjects), EMAIL)
            except BaseException as error:  # noqa: BLE001 - reported by the test
                errors.append(error)

        threads = [threading.Thread(target=hammer, args=(seed,)) for seed in range(4)]
        for thread in threads:
            thread.start()
        chooser = random.Random(99)
        last_revision = 0
        try:
            for _ in range(150):
                subject = chooser.choice(subjects)
                choice = (
                    pb.CHOICE_REFUSED
                    if last_choice[subject] == pb.CHOICE_GRANTED
                    else pb.CHOICE_GRANTED
                )
                written = support.set_choice(writer, subject, EMAIL, choice)
                last_choice[subject] = choice
                last_revision = max(last_revision, revision_number(written.revision) or 0)
        finally:
            stop.set()
            for thread in threads:
                thread.join()
        assert not errors, errors
        wait_until(
            lambda: (revision_number(cache.stats().revision) or 0) >= last_revision,
            5,
            "the Watch did not deliver the last write",
        )
        wrong = []
        for subject in subjects:
            expected = "E1" if last_choice[subject] == pb.CHOICE_GRANTED else "E2"
            for _ in range(2):
                answer = cache.check(subject, EMAIL)
                if answer.response.rule != expected:
                    wrong.append((subject, answer.response.rule, answer.from_memory))
        stats = cache.stats()
    print(f"\nrace: {stats.hits} hits, {stats.misses} misses, {stats.invalidations} invalidations")
    assert not wrong, f"stale answers after the last write was delivered: {wrong}"
