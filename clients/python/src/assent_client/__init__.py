"""Client of assent, the service that answers "may we process this user's data for this purpose?".

- :class:`Client` / :class:`AsyncClient`: every replica's address in, calls spread over them,
  read-only calls retried on UNAVAILABLE, any call the server shed (RESOURCE_EXHAUSTED with a
  ``RetryInfo``) retried after the pause it asked for, a bearer token on every call.
- :class:`LocalCache` / :class:`AsyncLocalCache`: Checks answered from memory, kept fresh by
  ``Changes.Watch``, with a bound on staleness (docs/clients.md of the service).
- :mod:`assent_client.pb`: the generated messages and enums of ``assent.v1``.
- :mod:`assent_client.errors`: the ``google.rpc`` details of an error (``errors.details(error)``:
  the field at fault, the reason, the pause before retrying).

::

    from assent_client import Client, LocalCache, pb

    with Client(["assent-0:50051", "assent-1:50051"], token=TOKEN) as client:
        with LocalCache(client) as cache:
            answer = cache.check("user-42", "MODEL_TRAINING", conversation_id="c-1")
            if answer.response.decision == pb.DECISION_ALLOW:
                ...
"""

from . import errors, pb
from .cache import Answer, AsyncLocalCache, CacheStats, LocalCache, WhenStale
from .client import AsyncClient, Client, check_request

__version__ = "0.1.0"

__all__ = [
    "Answer",
    "AsyncClient",
    "AsyncLocalCache",
    "CacheStats",
    "Client",
    "LocalCache",
    "WhenStale",
    "check_request",
    "errors",
    "pb",
]
