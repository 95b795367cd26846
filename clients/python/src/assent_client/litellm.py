"""A LiteLLM proxy guardrail that asks assent about each request's end user.

Before a request goes to the model, :class:`AssentGuardrail` asks assent (one ``BatchCheck``)
whether the request's end user may have this conversation used for model training and whether
the memory feature may use it, and applies the answer in LiteLLM's own terms:

- **DENY** for a purpose: the logging callbacks named for that purpose (``training_callbacks``,
  ``memory_callbacks``) are turned off for this request only; the request is tagged
  (``assent:model_training=DENY``, ``assent:rule=T5``) and its metadata carries the decision
  (``metadata.assent`` and ``metadata.spend_logs_metadata.assent``), so both reach the spend
  logs; the response carries ``x-assent-model-training: DENY`` / ``x-assent-memory: DENY`` for
  the calling application.
- **ALLOW** for every purpose: the request goes on untouched.
- **No answer** (assent unreachable, or no end user to ask about): fail closed, as configured:
  refuse the request, or let it through with every named callback off, tagged
  ``assent:unavailable`` / ``assent:no_user``.

Configured in the proxy's ``config.yaml`` (docs/gateways.md of the service)::

    guardrails:
      - guardrail_name: assent
        litellm_params:
          guardrail: assent_client.litellm.AssentGuardrail
          mode: pre_call
          default_on: true
          targets: ["assent-0.assent:50051", "assent-1.assent:50051"]
          training_callbacks: ["TrainingExport"]

How a callback is turned off for one request: open-source LiteLLM has no per-request switch for
one callback (``x-litellm-disable-callbacks`` and ``litellm_disabled_callbacks`` are honoured
only with an Enterprise licence, and ``no-log`` turns off every callback at once). Every success
and failure event of a callback passes through ``Logging.should_run_callback`` (the check behind
``no-log``); this module wraps it, once per process, so that it also answers False for a
callback named by a guardrail when the request's ``metadata.assent.off`` lists that purpose.
The guardrail only ever adds to ``off``: a caller who writes it in the request can turn
callbacks off for that request, never back on. Where a LiteLLM version lacks that method, a request with a
purpose off is sent with ``no-log`` (every callback off) instead.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import os
import re
import threading
import time
from typing import Any, Mapping, Sequence

import grpc

from . import pb
from .client import AsyncClient, check_request

try:
    import litellm as _litellm
    from litellm.integrations.custom_guardrail import CustomGuardrail
    from litellm.integrations.custom_logger import CustomLogger
    from litellm.litellm_core_utils import litellm_logging as _litellm_logging
except ImportError as error:  # pragma: no cover - depends on the environment
    raise ImportError(
        "assent_client.litellm needs LiteLLM: pip install 'assent-client[litellm]'"
    ) from error

__all__ = ["AssentGuardrail", "METADATA_KEY", "purposes_off"]

log = logging.getLogger("assent_client.litellm")

#: The request metadata key this guardrail writes (``metadata.assent``).
METADATA_KEY = "assent"

#: Purposes checked when the configuration names none.
DEFAULT_PURPOSES = ("MODEL_TRAINING", "MEMORY")
#: Where the conversation id is looked for when the configuration says nothing (first found).
DEFAULT_CONVERSATION_ID = ("metadata.conversation_id", "header.x-conversation-id")
#: The deadline of the question to assent, in seconds (retries on another replica included).
DEFAULT_TIMEOUT = 0.2

_ID = re.compile(r"^[A-Za-z0-9._:@-]{1,128}$")
_ACTIONS = ("strip", "deny")
_ENV_PREFIX = "os.environ/"
#: Seconds between two warnings that assent cannot be reached.
_WARN_EVERY = 10.0


# --- The per-request callback gate -------------------------------------------------------------

#: purpose key ("model_training") -> lower-cased names of the callbacks that purpose turns off,
#: the union over every AssentGuardrail of the process.
_GATED: dict[str, set[str]] = {}
_GATE_LOCK = threading.Lock()
_GATE_INSTALLED = False
_NAMES_BY_CLASS: dict[type, frozenset[str]] = {}


def purposes_off(metadata: Mapping[str, Any] | None) -> frozenset[str]:
    """The purposes (``"model_training"``, ``"memory"``...) the guardrail turned off for the
    request whose metadata this is: read it from a callback or hook to honour the decision
    (``purposes_off(kwargs["litellm_params"]["metadata"])``)."""
    if not isinstance(metadata, Mapping):
        return frozenset()
    assent = metadata.get(METADATA_KEY)
    if not isinstance(assent, Mapping):
        return frozenset()
    off = assent.get("off")
    if not isinstance(off, (list, tuple, set, frozenset)):
        return frozenset()
    return frozenset(str(purpose) for purpose in off)


def _request_purposes_off(litellm_params: Mapping[str, Any] | None) -> frozenset[str]:
    if not isinstance(litellm_params, Mapping):
        return frozenset()
    off: frozenset[str] = frozenset()
    for key in ("metadata", "litellm_metadata"):
        off |= purposes_off(litellm_params.get(key))
    return off


def _callback_names(callback: Any) -> frozenset[str]:
    """Every name a callback answers to, lower-cased: the string it was configured as, its class
    name, ``module.ClassName``, the names LiteLLM registers its class under (``langfuse``...)."""
    if isinstance(callback, str):
        return frozenset({callback.lower()})
    if not isinstance(callback, CustomLogger) and callable(callback):
        name = getattr(callback, "__name__", "")
        module = getattr(callback, "__module__", "")
        return frozenset(n.lower() for n in (name, f"{module}.{name}") if n and n != ".")
    cls = type(callback)
    cached = _NAMES_BY_CLASS.get(cls)
    if cached is not None:
        return cached
    names = {cls.__name__.lower(), f"{cls.__module__}.{cls.__name__}".lower()}
    try:
        from litellm.litellm_core_utils.custom_logger_registry import CustomLoggerRegistry

        for name, registered in CustomLoggerRegistry.CALLBACK_CLASS_STR_TO_CLASS_TYPE.items():
            if registered is cls:
                names.add(str(name).lower())
    except Exception as error:  # noqa: BLE001 - the registry is an extra, class names suffice
        log.debug("assent guardrail: LiteLLM's callback registry unreadable: %s", error)
    frozen = frozenset(names)
    _NAMES_BY_CLASS[cls] = frozen
    return frozen


def _is_gated(callback: Any, off: frozenset[str]) -> bool:
    names = _callback_names(callback)
    return any(names & _GATED.get(purpose, set()) for purpose in off)


def _install_gate() -> bool:
    """Wraps ``Logging.should_run_callback`` once per process; False when it cannot."""
    global _GATE_INSTALLED
    with _GATE_LOCK:
        if _GATE_INSTALLED:
            return True
        logging_class = getattr(_litellm_logging, "Logging", None)
        original = getattr(logging_class, "should_run_callback", None)
        if logging_class is None or not callable(original):
            return False

        @functools.wraps(original)
        def should_run_callback(
            self: Any, callback: Any, litellm_params: Any, event_hook: Any
        ) -> bool:
            off = _request_purposes_off(litellm_params)
            if off:
                try:
                    if _is_gated(callback, off):
                        log.debug("assent: %s off for this request (%s)", callback, sorted(off))
                        return False
                except Exception:  # fail closed: a marked request is not logged
                    log.exception("assent: could not name callback %r; not running it", callback)
                    return False
            return original(
                self, callback=callback, litellm_params=litellm_params, event_hook=event_hook
            )

        should_run_callback.__assent_gate__ = True  # type: ignore[attr-defined]
        logging_class.should_run_callback = should_run_callback
        _GATE_INSTALLED = True
        return True


# --- Configuration helpers ---------------------------------------------------------------------


def _resolve(value: Any) -> Any:
    """``os.environ/NAME`` as LiteLLM's configuration writes it: the variable's value."""
    if isinstance(value, str) and value.startswith(_ENV_PREFIX):
        name = value[len(_ENV_PREFIX) :]
        resolved = os.environ.get(name)
        if resolved is None:
            raise ValueError(f"assent guardrail: environment variable {name} is not set")
        return resolved
    return value


def _string_list(value: Any, option: str) -> list[str]:
    """A list from a YAML list or a comma-separated string (an environment variable)."""
    value = _resolve(value)
    if value is None:
        return []
    if isinstance(value, str):
        return [item.strip() for item in value.split(",") if item.strip()]
    if isinstance(value, (list, tuple)):
        return [str(_resolve(item)).strip() for item in value if str(_resolve(item)).strip()]
    raise ValueError(f"assent guardrail: {option} must be a list or a comma-separated string")


def _purpose_key(purpose: int) -> str:
    """``pb.PURPOSE_MODEL_TRAINING`` -> ``"model_training"``."""
    return pb.Purpose.Name(purpose)[len("PURPOSE_") :].lower()


def _purpose_value(name: str) -> int:
    spelled = str(name).strip().upper()
    if not spelled.startswith("PURPOSE_"):
        spelled = "PURPOSE_" + spelled
    try:
        value = pb.Purpose.Value(spelled)
    except ValueError:
        raise ValueError(f"assent guardrail: {name!r} is not a purpose of assent.v1") from None
    if value == pb.PURPOSE_UNSPECIFIED:
        raise ValueError("assent guardrail: PURPOSE_UNSPECIFIED is not a purpose to check")
    return value


def _action(value: Any, option: str) -> str:
    action = str(_resolve(value) or "").strip().lower()
    if action not in _ACTIONS:
        raise ValueError(
            f"assent guardrail: {option} must be one of {', '.join(_ACTIONS)}, not {value!r}"
        )
    return action


def _credentials(
    tls: Any, ca_file: str | None, cert_file: str | None, key_file: str | None
) -> grpc.ChannelCredentials | None:
    """TLS channel credentials from the options, or None for plaintext."""
    ca_file, cert_file, key_file = (
        _resolve(path) or None for path in (ca_file, cert_file, key_file)
    )
    wanted = str(_resolve(tls)).strip().lower() in ("true", "1", "yes", "on")
    if not (wanted or ca_file or cert_file or key_file):
        return None
    if bool(cert_file) != bool(key_file):
        raise ValueError("assent guardrail: tls_cert_file and tls_key_file go together")

    def read(path: str | None, option: str) -> bytes | None:
        if not path:
            return None
        try:
            with open(path, "rb") as file:
                return file.read()
        except OSError as error:
            raise ValueError(f"assent guardrail: {option}: {error}") from error

    return grpc.ssl_channel_credentials(
        root_certificates=read(ca_file, "tls_ca_file"),
        private_key=read(key_file, "tls_key_file"),
        certificate_chain=read(cert_file, "tls_cert_file"),
    )


def _close_later(client: AsyncClient) -> None:
    task = asyncio.ensure_future(client.close())
    task.add_done_callback(lambda done: done.cancelled() or done.exception())


def _header(purpose_key: str) -> str:
    return "x-assent-" + purpose_key.replace("_", "-")


# --- The guardrail -----------------------------------------------------------------------------


class AssentGuardrail(CustomGuardrail):
    """Asks assent about the request's end user before the call; see the module's doc.

    Options (the guardrail's ``litellm_params`` in ``config.yaml``; ``os.environ/NAME`` is read
    from the environment):

    - ``targets``: every assent replica, ``host:port`` (a list, or a comma-separated string).
    - ``api_key``: bearer token sent to assent (optional); or ``api_key_file``, a file holding
      it, read again whenever it changes (a short-lived token renewed by another process).
    - ``tls``: ``true`` for TLS with the system's roots; ``tls_ca_file`` (the CA of assent's
      certificate) implies it, and ``tls_cert_file`` + ``tls_key_file`` add a client
      certificate (mutual TLS). Without them the channel is plaintext.
    - ``timeout``: seconds for the whole question, retries included (default 0.2).
    - ``purposes``: what to ask (default ``[MODEL_TRAINING, MEMORY]``).
    - ``training_callbacks`` / ``memory_callbacks``: the callbacks that feed training data /
      the memory feature, turned off for a request whose answer is DENY. A name is what the
      callback was configured as (``langfuse``, ``s3_v2``), or its class name, or
      ``module.ClassName``.
    - ``conversation_id``: where the conversation id is read, first found wins:
      ``metadata.KEY``, ``header.NAME`` or ``body.FIELD`` (default
      ``[metadata.conversation_id, header.x-conversation-id]``).
    - ``on_unreachable``: ``strip`` (default: the request goes on with every named callback off,
      tagged ``assent:unavailable``) or ``deny`` (refused with 503).
    - ``on_missing_user``: the same choice for a request with no end user (or one that is not a
      valid subject id): ``strip`` (default, tagged ``assent:no_user``) or ``deny`` (400).
    - ``tag_requests``: add the ``assent:*`` tags to a request with a purpose off (default true).
    """

    def __init__(
        self,
        targets: Sequence[str] | str | None = None,
        api_key: str | None = None,
        api_key_file: str | None = None,
        tls: bool = False,
        tls_ca_file: str | None = None,
        tls_cert_file: str | None = None,
        tls_key_file: str | None = None,
        timeout: float | None = None,
        purposes: Sequence[str] | str | None = None,
        training_callbacks: Sequence[str] | str | None = None,
        memory_callbacks: Sequence[str] | str | None = None,
        conversation_id: Sequence[str] | str | None = None,
        on_unreachable: str = "strip",
        on_missing_user: str = "strip",
        tag_requests: bool = True,
        **kwargs: Any,
    ) -> None:
        self.targets = _string_list(targets, "targets")
        if not self.targets:
            raise ValueError(
                "assent guardrail: targets (assent's host:port, one per replica) is required"
            )
        self.token = _resolve(api_key) or None
        self.token_file = _resolve(api_key_file) or None
        if self.token and self.token_file:
            raise ValueError("assent guardrail: api_key or api_key_file, not both")
        self._token_checked_at = float("-inf")
        self._token_stamp: tuple[int, int] | None = None
        if self.token_file:
            self._read_token(strict=True)
        self.credentials = _credentials(tls, tls_ca_file, tls_cert_file, tls_key_file)
        assent_timeout = float(_resolve(timeout)) if timeout is not None else DEFAULT_TIMEOUT
        if assent_timeout <= 0:
            raise ValueError("assent guardrail: timeout must be a positive number of seconds")
        self.purposes = tuple(
            _purpose_value(name)
            for name in (_string_list(purposes, "purposes") or DEFAULT_PURPOSES)
        )
        self.callbacks_by_purpose: dict[str, frozenset[str]] = {
            _purpose_key(pb.PURPOSE_MODEL_TRAINING): frozenset(
                name.lower() for name in _string_list(training_callbacks, "training_callbacks")
            ),
            _purpose_key(pb.PURPOSE_MEMORY): frozenset(
                name.lower() for name in _string_list(memory_callbacks, "memory_callbacks")
            ),
        }
        self.conversation_sources = tuple(
            _string_list(conversation_id, "conversation_id") or DEFAULT_CONVERSATION_ID
        )
        for source in self.conversation_sources:
            kind, _, name = source.partition(".")
            if kind not in ("metadata", "header", "body") or not name:
                raise ValueError(
                    f"assent guardrail: conversation_id source {source!r} is not "
                    "metadata.KEY, header.NAME or body.FIELD"
                )
        self.on_unreachable = _action(on_unreachable, "on_unreachable")
        self.on_missing_user = _action(on_missing_user, "on_missing_user")
        self.tag_requests = str(_resolve(tag_requests)).strip().lower() not in (
            "false",
            "0",
            "no",
            "off",
        )
        super().__init__(timeout=assent_timeout, **kwargs)
        self.assent_timeout = assent_timeout

        with _GATE_LOCK:
            for purpose, names in self.callbacks_by_purpose.items():
                _GATED.setdefault(purpose, set()).update(names)
        self.gate = _install_gate()
        if not self.gate:
            log.warning(
                "assent guardrail: this LiteLLM has no Logging.should_run_callback; a request "
                "with a purpose off is sent with no-log (every logging callback off)"
            )
        self._client: AsyncClient | None = None
        self._client_loop: asyncio.AbstractEventLoop | None = None
        self._client_token: str | None = None
        self._unreachable_warned_at = float("-inf")
        self._unreachable_count = 0

    # -- the question --------------------------------------------------------------------------

    def _read_token(self, *, strict: bool = False) -> None:
        """Reads ``api_key_file`` again when it changed (looked at once a second at most)."""
        assert self.token_file is not None
        self._token_checked_at = time.monotonic()
        try:
            stat = os.stat(self.token_file)
            stamp = (stat.st_mtime_ns, stat.st_size)
            if stamp != self._token_stamp:
                with open(self.token_file, encoding="utf-8") as file:
                    self.token = file.read().strip() or None
                self._token_stamp = stamp
        except OSError as error:
            if strict:
                raise ValueError(f"assent guardrail: api_key_file: {error}") from error
            log.warning(
                "assent guardrail: api_key_file unreadable, keeping the last token: %s", error
            )

    def _assent(self) -> AsyncClient:
        """The client, made in the proxy's own event loop (grpc.aio channels belong to one), and
        made anew when the token file changed."""
        if self.token_file and time.monotonic() - self._token_checked_at >= 1.0:
            self._read_token()
        loop = asyncio.get_running_loop()
        if (
            self._client is None
            or self._client_loop is not loop
            or self._client_token != self.token
        ):
            previous, previous_loop = self._client, self._client_loop
            self._client = AsyncClient(
                self.targets,
                token=self.token,
                timeout=self.assent_timeout,
                credentials=self.credentials,
            )
            self._client_loop, self._client_token = loop, self.token
            if previous is not None and previous_loop is loop:
                # Calls under way on the previous client finish first.
                loop.call_later(10 * self.assent_timeout + 1, _close_later, previous)
        return self._client

    @staticmethod
    def subject_of(user_api_key_dict: Any, data: Mapping[str, Any]) -> str | None:
        """The end user as LiteLLM resolved it (the ``user`` field, the standard customer id
        headers, ``general_settings.user_header_name``...), else the body's ``user``."""
        for candidate in (getattr(user_api_key_dict, "end_user_id", None), data.get("user")):
            if isinstance(candidate, str) and candidate.strip():
                return candidate.strip()
        return None

    def conversation_of(self, data: Mapping[str, Any]) -> str | None:
        metadata = _metadata_of(data)
        headers = _headers_of(data)
        for source in self.conversation_sources:
            kind, _, name = source.partition(".")
            if kind == "metadata":
                value = metadata.get(name)
            elif kind == "header":
                value = headers.get(name.lower())
            else:
                value = data.get(name)
            if isinstance(value, (str, int)) and str(value).strip():
                return str(value).strip()
        return None

    async def ask(self, subject_id: str, conversation_id: str | None) -> list[pb.CheckResponse]:
        """One BatchCheck: a decision per configured purpose, in order."""
        requests = [
            check_request(subject_id, purpose, conversation_id=conversation_id)
            for purpose in self.purposes
        ]
        results = list(await self._assent().batch_check(requests, timeout=self.assent_timeout))
        if len(results) != len(requests):
            raise RuntimeError(f"assent answered {len(results)} checks for {len(requests)}")
        return results

    # -- the hook ------------------------------------------------------------------------------

    async def async_pre_call_hook(
        self,
        user_api_key_dict: Any,
        cache: Any,
        data: dict,
        call_type: Any,
    ) -> dict:
        subject_id = self.subject_of(user_api_key_dict, data)
        if subject_id is None or not _ID.match(subject_id):
            why = "no end user" if subject_id is None else "the end user is not a valid subject id"
            return self._undecided(data, "no_user", self.on_missing_user, why, status=400)
        conversation_id = self.conversation_of(data)
        if conversation_id is not None and not _ID.match(conversation_id):
            # Without the conversation, assent answers for the subject's conversations in general:
            # the conversation can only add exceptions that allow (feedback, flags), never deny.
            log.warning(
                "assent guardrail: conversation id %r is not valid; asking without it",
                conversation_id,
            )
            conversation_id = None
        try:
            answers = await self.ask(subject_id, conversation_id)
        except Exception as error:  # noqa: BLE001 - any failure to get an answer fails closed
            code = getattr(error, "code", None)
            detail = code().name if callable(code) else type(error).__name__
            self._warn_unreachable(detail, error)
            return self._undecided(
                data,
                "unavailable",
                self.on_unreachable,
                f"assent unreachable ({detail})",
                status=503,
            )
        denied = [answer for answer in answers if answer.decision != pb.DECISION_ALLOW]
        if not denied:
            return data  # every purpose allowed: the request goes on untouched
        decisions = {_purpose_key(answer.purpose): _decision_record(answer) for answer in denied}
        tags = []
        for answer in denied:
            tags.append(f"assent:{_purpose_key(answer.purpose)}={_decision_name(answer.decision)}")
            if answer.rule:
                tags.append(f"assent:rule={answer.rule}")
            if answer.degraded:
                tags.append("assent:degraded")
        self._mark(
            data, off=list(decisions), record={"subject_id": subject_id, **decisions}, tags=tags
        )
        return data

    def _warn_unreachable(self, detail: str, error: BaseException) -> None:
        """One warning per ``_WARN_EVERY`` seconds while assent cannot be reached, with a count."""
        self._unreachable_count += 1
        now = time.monotonic()
        if now - self._unreachable_warned_at >= _WARN_EVERY:
            log.warning(
                "assent guardrail: no answer from assent (%s, %d request(s) since the last "
                "warning; on_unreachable: %s): %s",
                detail,
                self._unreachable_count,
                self.on_unreachable,
                error,
            )
            self._unreachable_warned_at = now
            self._unreachable_count = 0

    def _undecided(self, data: dict, why: str, action: str, message: str, *, status: int) -> dict:
        """No decision to be had: every configured purpose off, then refused or let through."""
        off = [_purpose_key(purpose) for purpose in self.purposes]
        self._mark(data, off=off, record={why: True, "detail": message}, tags=[f"assent:{why}"])
        if action == "deny":
            from fastapi import HTTPException

            option = "on_unreachable" if why == "unavailable" else "on_missing_user"
            raise HTTPException(
                status_code=status,
                detail={
                    "error": f"refused by the assent guardrail: {message} ({option}: deny)",
                    "assent": why,
                },
            )
        return data

    def _mark(self, data: dict, *, off: list[str], record: dict[str, Any], tags: list[str]) -> None:
        """Writes the decision into the request: ``metadata.assent`` (read by the callback gate,
        the response headers and any hook), ``spend_logs_metadata.assent`` and the tags."""
        metadata = _metadata_of(data, create=True)
        existing = metadata.get(METADATA_KEY)
        merged: dict[str, Any] = dict(existing) if isinstance(existing, Mapping) else {}
        previous_off = merged.get("off") if isinstance(merged.get("off"), list) else []
        merged.update(record)
        merged["off"] = sorted(set(previous_off) | set(off))
        metadata[METADATA_KEY] = merged
        spend = metadata.get("spend_logs_metadata")
        spend = dict(spend) if isinstance(spend, Mapping) else {}
        spend[METADATA_KEY] = {key: value for key, value in merged.items()}
        metadata["spend_logs_metadata"] = spend
        if self.tag_requests:
            current = metadata.get("tags")
            current = list(current) if isinstance(current, (list, tuple)) else []
            metadata["tags"] = current + [tag for tag in dict.fromkeys(tags) if tag not in current]
        if not self.gate:
            data["no-log"] = True
            if getattr(_litellm, "global_disable_no_log_param", False):
                from fastapi import HTTPException

                raise HTTPException(
                    status_code=503,
                    detail={
                        "error": "refused by the assent guardrail: it cannot turn logging "
                        "callbacks off in this LiteLLM (no Logging.should_run_callback, and "
                        "no-log is disabled)",
                        "assent": "cannot_apply",
                    },
                )

    async def async_post_call_response_headers_hook(
        self,
        data: dict,
        user_api_key_dict: Any,
        response: Any,
        request_headers: dict[str, str] | None = None,
        litellm_call_info: dict[str, Any] | None = None,
    ) -> dict[str, str] | None:
        """``x-assent-<purpose>: DENY`` (and ``-rule``) for each purpose off, so that the calling
        application learns, for instance, that memory must not be written for this request."""
        metadata = _metadata_of(data)
        assent = metadata.get(METADATA_KEY)
        off = purposes_off(metadata)
        if not off or not isinstance(assent, Mapping):
            return None
        headers: dict[str, str] = {}
        for purpose in sorted(off):
            headers[_header(purpose)] = "DENY"
            record = assent.get(purpose)
            if isinstance(record, Mapping) and record.get("rule"):
                headers[_header(purpose) + "-rule"] = str(record["rule"])
        if assent.get("unavailable"):
            headers["x-assent-unavailable"] = "true"
        if assent.get("no_user"):
            headers["x-assent-no-user"] = "true"
        return headers


def _decision_record(answer: pb.CheckResponse) -> dict[str, Any]:
    return {
        "decision": _decision_name(answer.decision),
        "rule": answer.rule,
        "reason": pb.Reason.Name(answer.reason)[len("REASON_") :] if answer.reason else "",
        "decision_id": answer.decision_id,
        "revision": answer.revision,
        "degraded": answer.degraded,
    }


def _decision_name(decision: int) -> str:
    """``pb.DECISION_DENY`` -> ``"DENY"``."""
    return pb.Decision.Name(decision)[len("DECISION_") :]


def _metadata_of(data: dict | Mapping[str, Any], *, create: bool = False) -> dict[str, Any]:
    """The request's metadata dict: ``litellm_metadata`` on the routes that use it (/v1/messages,
    /v1/responses), ``metadata`` elsewhere."""
    for key in ("litellm_metadata", "metadata"):
        value = data.get(key)
        if isinstance(value, dict) and (key == "metadata" or value):
            return value
    if not create:
        return {}
    metadata: dict[str, Any] = {}
    data["metadata"] = metadata  # type: ignore[index]
    return metadata


def _headers_of(data: Mapping[str, Any]) -> dict[str, str]:
    headers: dict[str, str] = {}
    for source in (
        (
            (data.get("proxy_server_request") or {}).get("headers")
            if isinstance(data.get("proxy_server_request"), Mapping)
            else None
        ),
        _metadata_of(data).get("headers"),
    ):
        if isinstance(source, Mapping):
            for name, value in source.items():
                headers.setdefault(str(name).lower(), str(value))
    return headers
