"""The messages and enums of ``assent.v1``, generated from the service's proto files.

One flat namespace, as the proto package is: ``pb.CheckRequest``, ``pb.Purpose``,
``pb.PURPOSE_MODEL_TRAINING``, ``pb.DECISION_ALLOW``, ``pb.Reason``, ``pb.WatchRequest``...
"""

# ruff: noqa: F401, F403
from ._proto.types_pb2 import *
from ._proto.decisions_pb2 import *
from ._proto.subjects_pb2 import *
from ._proto.changes_pb2 import *
from ._proto.policies_pb2 import *
from ._proto.retention_pb2 import *
from ._proto.rights_pb2 import *
from ._proto.audit_pb2 import *

# Each module's file descriptor came along with the star imports; none of them is "the" one.
del DESCRIPTOR  # type: ignore[name-defined]  # noqa: F821
# Nor are the aliases the generated modules import each other under.
for _alias in [name for name in globals() if name.endswith("__pb2")]:
    del globals()[_alias]
del _alias
