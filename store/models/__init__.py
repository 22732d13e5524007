"""Job store tables, one module per workload; importing this package registers them all
(Alembic's autogenerate and the schema check read ``SQLModel.metadata``)."""

from store.models.base import UtcDatetime, as_utc, new_id, table_of, utcnow
from store.models.bot import (
    ApiKeyState,
    BotRequest,
    BotRequestStatus,
    DeliveryStatus,
    FollowUp,
    UsageCounter,
    UserCooldown,
)
from store.models.service import (
    Callback,
    CallbackKind,
    CallbackStatus,
    CallbackSubject,
    IdempotentRequest,
    WorkerHeartbeat,
)
from store.models.transcription import ChunkStatus, JobStatus, TranscriptionChunk, TranscriptionJob
from store.models.videos import (
    AttemptOutcome,
    BatchStatus,
    Video,
    VideoAttempt,
    VideoBatch,
    VideoStatus,
)

__all__ = [
    "ApiKeyState",
    "AttemptOutcome",
    "BatchStatus",
    "BotRequest",
    "BotRequestStatus",
    "Callback",
    "CallbackKind",
    "CallbackStatus",
    "CallbackSubject",
    "ChunkStatus",
    "DeliveryStatus",
    "FollowUp",
    "IdempotentRequest",
    "JobStatus",
    "TranscriptionChunk",
    "TranscriptionJob",
    "UsageCounter",
    "UserCooldown",
    "UtcDatetime",
    "Video",
    "VideoAttempt",
    "VideoBatch",
    "VideoStatus",
    "WorkerHeartbeat",
    "as_utc",
    "new_id",
    "table_of",
    "utcnow",
]
