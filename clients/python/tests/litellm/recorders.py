"""Logging callbacks of the LiteLLM proxy under test, each appending what it is given to
``$ASSENT_TEST_RECORDS/<name>.jsonl``, one JSON object per event:

- ``TrainingExport`` stands for the callback that feeds training data (the guardrail's
  ``training_callbacks``),
- ``MemoryWriter`` for the one that feeds the memory feature (``memory_callbacks``),
- ``AuditLog`` for any other callback, which the guardrail never turns off: it shows what the
  spend logs receive (the request's tags and ``spend_logs_metadata``).

Loaded by the proxy from this directory (``callbacks: ["recorders.training_export", ...]``).
"""

from __future__ import annotations

import json
import os
import threading
from pathlib import Path
from typing import Any

from litellm.integrations.custom_logger import CustomLogger

_LOCK = threading.Lock()


# The signatures are LiteLLM's (CustomLogger); kwargs is the call's model_call_details.
class _Recorder(CustomLogger):
    name = "recorder"

    def _record(self, event: str, kwargs: dict[str, Any]) -> None:
        payload = kwargs.get("standard_logging_object") or {}
        litellm_params = kwargs.get("litellm_params") or {}
        metadata = litellm_params.get("metadata") or {}
        record = {
            "event": event,
            "call_id": kwargs.get("litellm_call_id") or payload.get("id"),
            "model": kwargs.get("model"),
            "user": kwargs.get("user") or payload.get("end_user"),
            "messages": kwargs.get("messages"),
            "request_tags": payload.get("request_tags") or [],
            "spend_logs_metadata": (payload.get("metadata") or {}).get("spend_logs_metadata"),
            "assent": metadata.get("assent"),
        }
        directory = Path(os.environ["ASSENT_TEST_RECORDS"])
        with _LOCK, open(directory / f"{self.name}.jsonl", "a", encoding="utf-8") as out:
            out.write(json.dumps(record, default=str) + "\n")

    def log_success_event(self, kwargs, response_obj, start_time, end_time):
        self._record("success", kwargs)

    async def async_log_success_event(self, kwargs, response_obj, start_time, end_time):
        self._record("async_success", kwargs)

    def log_failure_event(self, kwargs, response_obj, start_time, end_time):
        self._record("failure", kwargs)

    async def async_log_failure_event(self, kwargs, response_obj, start_time, end_time):
        self._record("async_failure", kwargs)


class TrainingExport(_Recorder):
    name = "training"


class MemoryWriter(_Recorder):
    name = "memory"


class AuditLog(_Recorder):
    name = "audit"


training_export = TrainingExport()
memory_writer = MemoryWriter()
audit_log = AuditLog()
