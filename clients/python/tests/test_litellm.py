"""The LiteLLM guardrail (assent_client.litellm) in a real LiteLLM proxy, against a real server.

The proxy is LiteLLM as installed from PyPI, started as its own process with
``tests/litellm/config.yaml``: a model answering with a mock response (no network), three
logging callbacks recording what they receive (``tests/litellm/recorders.py``: ``TrainingExport``
stands for the callback that feeds training data, ``MemoryWriter`` for the memory feature,
``AuditLog`` for any other) and the guardrail. Requests are sent over HTTP as an application
would, with ``user`` naming the end user.

Skipped where LiteLLM's proxy is not installed (run it in the LiteLLM environment that
scripts/test-python makes).
"""

from __future__ import annotations

import importlib.util
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any, Callable, Iterator

import pytest

# LiteLLM's model cost map as shipped in the package, not fetched from the network at import
# (in this process, which imports the guardrail, and in the proxy's).
os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")

# tests/litellm/ (this test's files) would pass for a namespace package named litellm: only an
# installed LiteLLM counts.
_litellm = importlib.util.find_spec("litellm")
if _litellm is None or _litellm.origin in (None, "namespace"):
    pytest.skip("LiteLLM is not installed (pip install 'litellm[proxy]')", allow_module_level=True)
pytest.importorskip("fastapi", reason="LiteLLM's proxy extra is not installed")

import support  # noqa: E402
from assent_client import Client, pb  # noqa: E402

HERE = Path(__file__).resolve().parent / "litellm"
#: The end user who refused training and memory (T5 and M1 of the default policy).
OPTED_OUT = "lena-litellm"
#: The end user on a FREE plan who granted training (T6) and left memory alone (M2).
OPTED_IN = "otto-litellm"
#: A conversation of OPTED_OUT with feedback on it: trained on despite the refusal (T3).
FEEDBACK_CONVERSATION = "c-feedback-1"
MOCK_ANSWER = "a mock answer"
STARTUP_SECONDS = 120.0


def litellm_command() -> str:
    """The ``litellm`` CLI of this interpreter's environment."""
    beside = Path(sys.executable).parent / "litellm"
    if beside.is_file():
        return str(beside)
    found = shutil.which("litellm")
    if found is None:
        pytest.skip("the litellm CLI (LiteLLM's proxy) is not installed")
    return found


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class Proxy:
    """``litellm --config tests/litellm/config.yaml`` on a free port of loopback."""

    def __init__(self, assent_targets: str, down_targets: str) -> None:
        self.records = Path(tempfile.mkdtemp(prefix="assent-litellm-records-"))
        self.master_key = "sk-" + secrets.token_hex(24)
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        environment = {
            key: value
            for key, value in os.environ.items()
            # No database: the proxy runs on its configuration alone.
            if key not in ("DATABASE_URL", "DIRECT_URL", "LITELLM_MASTER_KEY")
        }
        environment.update(
            {
                "LITELLM_MASTER_KEY": self.master_key,
                # The cost map shipped in the package, rather than one fetched from the network.
                "LITELLM_LOCAL_MODEL_COST_MAP": "True",
                "ASSENT_TARGETS": assent_targets,
                "ASSENT_DOWN_TARGETS": down_targets,
                "ASSENT_TEST_RECORDS": str(self.records),
                "PYTHONUNBUFFERED": "1",
            }
        )
        self.log_path = self.records / "proxy.log"
        self._log = open(self.log_path, "wb")
        started = time.monotonic()
        self.process = subprocess.Popen(
            [
                litellm_command(),
                "--config",
                str(HERE / "config.yaml"),
                "--host",
                "127.0.0.1",
                "--port",
                str(self.port),
            ],
            cwd=str(HERE),
            env=environment,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        self._wait_ready()
        self.startup_seconds = time.monotonic() - started

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + STARTUP_SECONDS
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"the LiteLLM proxy exited at startup:\n{self.log_tail()}")
            try:
                with urllib.request.urlopen(f"{self.url}/health/liveliness", timeout=1) as response:
                    if response.status == 200:
                        return
            except (OSError, urllib.error.URLError):
                pass
            time.sleep(0.2)
        self.stop()
        raise RuntimeError(
            f"the LiteLLM proxy did not start in {STARTUP_SECONDS:.0f} s:\n{self.log_tail()}"
        )

    def log_tail(self, lines: int = 60) -> str:
        self._log.flush()
        text = self.log_path.read_text(encoding="utf-8", errors="replace")
        return "\n".join(text.splitlines()[-lines:])

    def stop(self) -> None:
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait()
        self._log.close()
        shutil.rmtree(self.records, ignore_errors=True)

    def chat(
        self,
        *,
        user: str | None,
        model: str = "chat",
        content: str = "hello",
        metadata: dict[str, Any] | None = None,
        headers: dict[str, str] | None = None,
        stream: bool = False,
    ) -> "Reply":
        body: dict[str, Any] = {"model": model, "messages": [{"role": "user", "content": content}]}
        if user is not None:
            body["user"] = user
        if metadata is not None:
            body["metadata"] = metadata
        if stream:
            body["stream"] = True
        request = urllib.request.Request(
            f"{self.url}/v1/chat/completions",
            data=json.dumps(body).encode(),
            headers={
                "authorization": f"Bearer {self.master_key}",
                "content-type": "application/json",
                **(headers or {}),
            },
            method="POST",
        )
        try:
            with urllib.request.urlopen(request, timeout=30) as response:
                return Reply(
                    response.status, dict(response.headers.items()), response.read().decode()
                )
        except urllib.error.HTTPError as error:
            return Reply(error.code, dict(error.headers.items()), error.read().decode())

    def records_of(self, logger: str) -> list[dict[str, Any]]:
        path = self.records / f"{logger}.jsonl"
        if not path.exists():
            return []
        return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line]

    def logged(self, logger: str, call_id: str) -> list[dict[str, Any]]:
        return [record for record in self.records_of(logger) if record["call_id"] == call_id]

    def wait_for(
        self, find: Callable[[], list[dict[str, Any]]], timeout: float = 15.0
    ) -> list[dict[str, Any]]:
        """What ``find`` returns once it is not empty (logging runs after the response)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            found = find()
            if found:
                return found
            time.sleep(0.05)
        raise AssertionError(f"never logged:\n{self.log_tail()}")

    def wait_logged(self, logger: str, call_id: str) -> list[dict[str, Any]]:
        return self.wait_for(lambda: self.logged(logger, call_id))

    def settle(self, call_id: str) -> None:
        """Waits for the call's logging to be done: AuditLog (never turned off) has it, and the
        callbacks run in one pass per event, so the others have had their turn."""
        self.wait_logged("audit", call_id)
        time.sleep(0.3)


class Reply:
    def __init__(self, status: int, headers: dict[str, str], body: str) -> None:
        self.status = status
        self.headers = {name.lower(): value for name, value in headers.items()}
        self.body = body

    @property
    def call_id(self) -> str:
        return self.headers["x-litellm-call-id"]

    def json(self) -> Any:
        return json.loads(self.body)

    def answer(self) -> str:
        if self.body.startswith("data:"):
            parts = []
            for line in self.body.splitlines():
                if line.startswith("data:") and line[5:].strip() not in ("", "[DONE]"):
                    delta = json.loads(line[5:])["choices"][0].get("delta") or {}
                    parts.append(delta.get("content") or "")
            return "".join(parts)
        return self.json()["choices"][0]["message"]["content"]  # type: ignore[no-any-return]

    def assent_headers(self) -> dict[str, str]:
        return {name: value for name, value in self.headers.items() if name.startswith("x-assent-")}


@pytest.fixture(scope="module")
def assent_server(assent_binary: str) -> Iterator[support.Server]:
    server = support.Server()
    with Client([server.address]) as client:
        support.upsert(client, OPTED_OUT, pb.PLAN_FREE)
        support.set_choice(client, OPTED_OUT, pb.PURPOSE_MODEL_TRAINING, pb.CHOICE_REFUSED)
        support.set_choice(client, OPTED_OUT, pb.PURPOSE_MEMORY, pb.CHOICE_REFUSED)
        client.subjects.RecordFeedback(
            pb.RecordFeedbackRequest(
                subject_id=OPTED_OUT,
                conversation_id=FEEDBACK_CONVERSATION,
                rating=pb.RATING_THUMBS_UP,
                actor=support.actor(),
            )
        )
        support.upsert(client, OPTED_IN, pb.PLAN_FREE)
        support.set_choice(client, OPTED_IN, pb.PURPOSE_MODEL_TRAINING, pb.CHOICE_GRANTED)
    yield server
    server.stop()


@pytest.fixture(scope="module")
def proxy(assent_server: support.Server) -> Iterator[Proxy]:
    # A port nothing listens on: assent unreachable.
    running = Proxy(assent_targets=assent_server.address, down_targets=f"127.0.0.1:{free_port()}")
    print(f"\nLiteLLM proxy ready in {running.startup_seconds:.1f} s")
    yield running
    running.stop()


def assent_tags(record: dict[str, Any]) -> list[str]:
    return sorted(tag for tag in record["request_tags"] if tag.startswith("assent:"))


# --- the acceptance: opted out, opted in, assent unreachable -----------------------------------


def test_an_opted_out_user_is_served_untrained_and_the_decision_is_tagged(proxy: Proxy) -> None:
    reply = proxy.chat(user=OPTED_OUT, metadata={"conversation_id": "c-plain-1"})

    assert reply.status == 200, reply.body
    assert reply.answer() == MOCK_ANSWER
    proxy.settle(reply.call_id)
    assert proxy.logged("training", reply.call_id) == [], (
        "the training callback logged an opted-out user"
    )
    assert proxy.logged("memory", reply.call_id) == [], (
        "the memory callback logged an opted-out user"
    )

    (audit,) = [r for r in proxy.logged("audit", reply.call_id) if r["event"] == "async_success"]
    assert assent_tags(audit) == [
        "assent:memory=DENY",
        "assent:model_training=DENY",
        "assent:rule=M1",
        "assent:rule=T5",
    ]
    # What the spend logs store beside the tags.
    decision = audit["spend_logs_metadata"]["assent"]
    assert decision["off"] == ["memory", "model_training"]
    assert decision["subject_id"] == OPTED_OUT
    training = decision["model_training"]
    assert (training["decision"], training["rule"], training["reason"]) == (
        "DENY",
        "T5",
        "CHOICE_REFUSED",
    )
    assert training["decision_id"] and training["revision"] and training["degraded"] is False
    assert (decision["memory"]["decision"], decision["memory"]["rule"]) == ("DENY", "M1")
    # And what the application learns from the response.
    assert reply.assent_headers() == {
        "x-assent-memory": "DENY",
        "x-assent-memory-rule": "M1",
        "x-assent-model-training": "DENY",
        "x-assent-model-training-rule": "T5",
    }


def test_an_opted_in_user_is_untouched(proxy: Proxy) -> None:
    content = "an opted-in user's question"
    reply = proxy.chat(user=OPTED_IN, content=content, metadata={"conversation_id": "c-plain-2"})

    assert reply.status == 200, reply.body
    assert reply.answer() == MOCK_ANSWER
    assert reply.assent_headers() == {}
    proxy.settle(reply.call_id)
    (training,) = [
        r for r in proxy.logged("training", reply.call_id) if r["event"] == "async_success"
    ]
    assert training["user"] == OPTED_IN
    assert training["messages"] == [{"role": "user", "content": content}]
    assert training["assent"] is None
    assert assent_tags(training) == []
    assert not (training["spend_logs_metadata"] or {}).get("assent")
    (memory,) = [r for r in proxy.logged("memory", reply.call_id) if r["event"] == "async_success"]
    assert memory["assent"] is None


def test_unreachable_assent_with_deny_refuses_the_request(proxy: Proxy) -> None:
    content = "refused while assent is down " + secrets.token_hex(8)
    reply = proxy.chat(user=OPTED_IN, model="chat-assent-down-deny", content=content)

    assert reply.status == 503, reply.body
    error = reply.json()["error"]
    assert "assent unreachable" in error["message"], error
    assert "on_unreachable: deny" in error["message"]
    assert MOCK_ANSWER not in reply.body
    # LiteLLM logs the refusal as a failure, with the request's messages, to every callback but
    # the ones feeding training and memory.
    failures = proxy.wait_for(
        lambda: [r for r in proxy.records_of("audit") if content in json.dumps(r["messages"])]
    )
    assert {r["event"] for r in failures} <= {"failure", "async_failure"}
    assert all(r["assent"]["unavailable"] is True for r in failures)
    time.sleep(0.3)
    for logger in ("training", "memory"):
        assert not [r for r in proxy.records_of(logger) if content in json.dumps(r["messages"])], (
            logger
        )


def test_unreachable_assent_with_strip_serves_the_request_untrained_and_tagged(
    proxy: Proxy,
) -> None:
    started = time.monotonic()
    reply = proxy.chat(user=OPTED_IN, model="chat-assent-down-strip")
    elapsed = time.monotonic() - started

    assert reply.status == 200, reply.body
    assert reply.answer() == MOCK_ANSWER
    assert elapsed < 5, f"the request waited {elapsed:.1f} s for an unreachable assent"
    assert reply.assent_headers() == {
        "x-assent-memory": "DENY",
        "x-assent-model-training": "DENY",
        "x-assent-unavailable": "true",
    }
    proxy.settle(reply.call_id)
    assert proxy.logged("training", reply.call_id) == []
    assert proxy.logged("memory", reply.call_id) == []
    (audit,) = [r for r in proxy.logged("audit", reply.call_id) if r["event"] == "async_success"]
    assert assent_tags(audit) == ["assent:unavailable"]
    decision = audit["spend_logs_metadata"]["assent"]
    assert decision["unavailable"] is True and decision["off"] == ["memory", "model_training"]
    assert "UNAVAILABLE" in decision["detail"] or "DEADLINE_EXCEEDED" in decision["detail"]


# --- around the acceptance ---------------------------------------------------------------------


def test_the_conversation_is_asked_about(proxy: Proxy) -> None:
    """Feedback on the conversation trains on it despite the refusal (T3); memory stays off.
    The conversation id comes from the metadata, or from the header."""
    for reply in (
        proxy.chat(user=OPTED_OUT, metadata={"conversation_id": FEEDBACK_CONVERSATION}),
        proxy.chat(user=OPTED_OUT, headers={"x-conversation-id": FEEDBACK_CONVERSATION}),
    ):
        assert reply.status == 200, reply.body
        assert reply.assent_headers() == {"x-assent-memory": "DENY", "x-assent-memory-rule": "M1"}
        proxy.settle(reply.call_id)
        assert [r["event"] for r in proxy.logged("training", reply.call_id)] == ["async_success"]
        assert proxy.logged("memory", reply.call_id) == []
        (audit,) = [
            r for r in proxy.logged("audit", reply.call_id) if r["event"] == "async_success"
        ]
        assert assent_tags(audit) == ["assent:memory=DENY", "assent:rule=M1"]


def test_a_streamed_answer_to_an_opted_out_user_is_not_trained_on(proxy: Proxy) -> None:
    reply = proxy.chat(user=OPTED_OUT, stream=True)

    assert reply.status == 200, reply.body
    assert reply.answer() == MOCK_ANSWER
    assert reply.headers.get("x-assent-model-training") == "DENY"
    proxy.settle(reply.call_id)
    assert proxy.logged("training", reply.call_id) == []


def test_a_request_without_an_end_user_is_not_trained_on(proxy: Proxy) -> None:
    reply = proxy.chat(user=None)

    assert reply.status == 200, reply.body
    assert reply.headers.get("x-assent-no-user") == "true"
    proxy.settle(reply.call_id)
    assert proxy.logged("training", reply.call_id) == []
    (audit,) = [r for r in proxy.logged("audit", reply.call_id) if r["event"] == "async_success"]
    assert assent_tags(audit) == ["assent:no_user"]


def test_a_caller_cannot_turn_a_denial_off(proxy: Proxy) -> None:
    """Metadata the caller sends under ``assent`` changes nothing for an opted-out user."""
    reply = proxy.chat(user=OPTED_OUT, metadata={"assent": {"off": []}, "tags": ["mine"]})

    assert reply.status == 200, reply.body
    proxy.settle(reply.call_id)
    assert proxy.logged("training", reply.call_id) == []
    (audit,) = [r for r in proxy.logged("audit", reply.call_id) if r["event"] == "async_success"]
    assert "mine" in audit["request_tags"]
    assert "assent:model_training=DENY" in audit["request_tags"]


# --- configuration, without a proxy -------------------------------------------------------------


def test_the_configuration_is_checked() -> None:
    from assent_client.litellm import AssentGuardrail

    with pytest.raises(ValueError, match="targets"):
        AssentGuardrail(guardrail_name="assent")
    with pytest.raises(ValueError, match="on_unreachable"):
        AssentGuardrail(guardrail_name="assent", targets=["127.0.0.1:1"], on_unreachable="allow")
    with pytest.raises(ValueError, match="not a purpose"):
        AssentGuardrail(guardrail_name="assent", targets=["127.0.0.1:1"], purposes=["TRAINING"])
    with pytest.raises(ValueError, match="conversation_id"):
        AssentGuardrail(
            guardrail_name="assent", targets=["127.0.0.1:1"], conversation_id=["cookie.c"]
        )
    guardrail = AssentGuardrail(
        guardrail_name="assent",
        targets="a:50051, b:50051",
        purposes="model_training",
        training_callbacks="langfuse,TrainingExport",
    )
    assert guardrail.targets == ["a:50051", "b:50051"]
    assert guardrail.purposes == (pb.PURPOSE_MODEL_TRAINING,)
    assert guardrail.callbacks_by_purpose["model_training"] == {"langfuse", "trainingexport"}
    assert guardrail.on_unreachable == "strip" and guardrail.on_missing_user == "strip"
    assert guardrail.gate, "LiteLLM's Logging.should_run_callback was not found"


def test_tls_options_are_checked(tmp_path: Path) -> None:
    from assent_client.litellm import AssentGuardrail

    assert AssentGuardrail(guardrail_name="assent", targets="a:1").credentials is None
    assert AssentGuardrail(guardrail_name="assent", targets="a:1", tls=True).credentials is not None
    with pytest.raises(ValueError, match="tls_ca_file"):
        AssentGuardrail(guardrail_name="assent", targets="a:1", tls_ca_file=str(tmp_path / "none"))
    with pytest.raises(ValueError, match="go together"):
        AssentGuardrail(guardrail_name="assent", targets="a:1", tls_cert_file="client.pem")


def test_the_token_file_is_read_again_when_it_changes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import asyncio

    from assent_client.litellm import AssentGuardrail

    token = tmp_path / "token"
    token.write_text("first\n")
    with pytest.raises(ValueError, match="api_key_file"):
        AssentGuardrail(guardrail_name="assent", targets="a:1", api_key_file=str(tmp_path / "x"))
    monkeypatch.setenv("ASSENT_TEST_TOKEN_FILE", str(token))
    guardrail = AssentGuardrail(
        guardrail_name="assent", targets="a:1", api_key_file="os.environ/ASSENT_TEST_TOKEN_FILE"
    )
    assert guardrail.token == "first"

    async def clients() -> tuple[Any, Any, Any]:
        first = guardrail._assent()
        same = guardrail._assent()
        token.write_text("the second token\n")
        guardrail._token_checked_at = float("-inf")  # as if a second had passed
        second = guardrail._assent()
        for client in {first, second}:
            await client.close()
        return first, same, second

    first, same, second = asyncio.run(clients())
    assert first is same and second is not first
    assert guardrail.token == "the second token"
