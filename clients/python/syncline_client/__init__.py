"""Python client for Syncline: RxDB-style replication (pull, push, live stream) over gRPC.

>>> from syncline_client import SynclineClient, Doc, ChangeRow
>>> with SynclineClient("127.0.0.1:50051") as client:            # doctest: +SKIP
...     client.push("tasks", [ChangeRow(Doc("t-1", {"title": "write docs"}))])
...     docs, checkpoint = client.pull_all("tasks")

The generated stubs live in ``syncline_client._gen`` (the build hook in ``setup.py`` writes them).
"""

from .client import (
    ChangeRow,
    Doc,
    OverwrittenVersion,
    PushResult,
    ReconcileLimits,
    ReconcileResult,
    RefusedRow,
    ResolvedRow,
    ResumeResult,
    ResyncRequired,
    Subscription,
    SynclineClient,
    UnresolvedConflict,
)
from .attachments import file_digest
from .errors import (
    AttachmentCorrupted,
    AttachmentNotFound,
    CheckpointExpired,
    CheckpointInvalid,
    CollectionNotFound,
    FieldViolation,
    IdempotencyKeyReused,
    InvalidDocument,
    InvalidRequest,
    LimitExceeded,
    NotOwner,
    OutsideWriteFilter,
    OverwrittenNotKept,
    ScopeMissing,
    SynclineError,
    TokenExpired,
    TokenInvalid,
    Unavailable,
)

__all__ = [
    "AttachmentCorrupted",
    "AttachmentNotFound",
    "ChangeRow",
    "CheckpointExpired",
    "CheckpointInvalid",
    "CollectionNotFound",
    "Doc",
    "FieldViolation",
    "IdempotencyKeyReused",
    "InvalidDocument",
    "InvalidRequest",
    "LimitExceeded",
    "NotOwner",
    "OutsideWriteFilter",
    "OverwrittenNotKept",
    "OverwrittenVersion",
    "PushResult",
    "ReconcileLimits",
    "ReconcileResult",
    "RefusedRow",
    "ResolvedRow",
    "ResumeResult",
    "ResyncRequired",
    "ScopeMissing",
    "Subscription",
    "SynclineClient",
    "SynclineError",
    "TokenExpired",
    "TokenInvalid",
    "Unavailable",
    "UnresolvedConflict",
    "file_digest",
]
__version__ = "0.1.0"
