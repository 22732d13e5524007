"""Relay's one settings object: environment variables with the ``RELAY_`` prefix."""

from __future__ import annotations

from collections.abc import Mapping
from functools import lru_cache
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from relay_discord import DiscordSettings
from relay_objectives import ObjectivesSettings
from relay_operations import HealthSettings, MetricsSettings, WorkersSettings

PROJECT_ROOT = Path(__file__).resolve().parent
DEFAULT_STATE_DIR = PROJECT_ROOT / ".relay"
BUNDLED_MODEL = "tiny.en"


class _Group(BaseModel):
    """A group of settings: ``RELAY_<GROUP>_<FIELD>`` in the environment."""

    model_config = ConfigDict(extra="ignore", frozen=True)


class AsrSettings(_Group):
    """Speech recognition: the faster-whisper model and how it decodes."""

    model: str = Field(
        default=BUNDLED_MODEL,
        description="faster-whisper model: 'tiny.en' (bundled), a model name or a local path.",
    )
    device: Literal["cpu", "cuda", "auto"] = Field(
        default="cpu", description="Where the model runs."
    )
    compute_type: str = Field(default="int8", description="CTranslate2 compute type.")
    cpu_threads: int = Field(
        default=1, ge=0, description="Threads per Dask worker's model (0: CTranslate2 default)."
    )
    beam_size: int = Field(default=5, ge=1, le=20, description="Beam size for decoding.")
    vad_filter: bool = Field(
        default=False, description="Run faster-whisper's Silero VAD inside each chunk."
    )
    pause_windows: bool = Field(
        default=True,
        description="Decode each chunk in windows of about 22 s cut in its pauses, without "
        "timestamp tokens (tasks/windows.py): fewer errors at window seams and faster "
        "(bench/asr.py); cue times inside a window are shared out by characters. Off: "
        "Whisper's own 30 s windows and segment timestamps. Not used with vad_filter or "
        "word_timestamps.",
    )
    window_batch: int = Field(
        default=8,
        ge=1,
        le=32,
        description="How many of a chunk's pause-cut windows one batched beam search decodes "
        "(tasks/window_decode.py). Memory grows with it: each of its window x beam "
        "hypotheses keeps the window's cross-attention keys and values (tiny.en about 18 MB, "
        "large-v3 about 490 MB). 8 suits tiny and base; use 1 or 2 for large models on a CPU.",
    )
    condition_on_previous_text: bool = Field(
        default=False,
        description="Prompt each 30 s window with the text decoded before it (faster-whisper's "
        "default). Off: every window decodes with a short prompt, about 25 % faster at the "
        "same accuracy on Relay's silence-cut chunks (bench/asr.py), as the batched pipeline "
        "does; on: more consistent spelling of names across a chunk.",
    )


def english_only(model: str) -> bool:
    """Whether the faster-whisper ``model`` (a name or a folder) transcribes English alone:
    the ``*.en`` models and distil-whisper's."""
    name = Path(model.rstrip("/")).name.lower()
    return name.endswith(".en") or "distil" in name


class ChunkSettings(_Group):
    """How a file is cut into chunks and how a chunk's transcription is guarded."""

    target_seconds: float = Field(
        default=120.0, gt=5, description="Aimed-for chunk length when splitting on silence."
    )
    first_seconds: float = Field(
        default=30.0,
        ge=0,
        description="Aimed-for length of a job's first chunk (0: like the others); short, "
        "so that its text, and the job's progress, come back within seconds.",
    )
    search_seconds: float = Field(
        default=20.0,
        gt=0,
        description="How far either side of a target boundary to look for silence.",
    )
    timeout_seconds: float = Field(
        default=900.0, gt=0, description="A chunk's transcription is abandoned after this long."
    )
    retries: int = Field(default=2, ge=0, description="Retries of a failed chunk.")


class DaskSettings(_Group):
    """Where chunks run: an existing Dask cluster, or a LocalCluster."""

    address: str = Field(
        default="", description="Scheduler of an existing Dask cluster; empty: a LocalCluster."
    )
    workers: int = Field(
        default=0, ge=0, description="Worker processes of the LocalCluster (0: one per core)."
    )


class ApiSettings(_Group):
    """The REST API process."""

    token: SecretStr = Field(
        default=SecretStr(""), description="Bearer token the REST API requires (empty: none)."
    )
    host: str = Field(default="127.0.0.1", description="Address the REST API binds to.")
    port: int = Field(default=8000, description="Port of the REST API.")
    access_log: bool = Field(
        default=True, description="Log one line per API request (uvicorn's access log)."
    )
    workers: int = Field(
        default=1, ge=1, le=64, description="API processes (uvicorn workers); >1 needs a server."
    )


class TranscribeSettings(_Group):
    """How the API hands a transcription to Prefect."""

    deployment: str = Field(
        default="transcribe/asr-cpu", description="Deployment that API submissions run on."
    )
    via: Literal["deployment", "task-worker"] = Field(
        default="deployment",
        description="How API submissions run: 'deployment' (a flow run on the pool's worker) "
        "or 'task-worker' (a background task on the pool's warm task worker, "
        "`python -m cli worker`: starts in about a second).",
    )


class JobSettings(_Group):
    """Transcription jobs in the store."""

    lease_seconds: float = Field(
        default=60.0,
        gt=1,
        description="A transcription job's lease on its task worker; renewed every third of "
        "it while the worker lives, taken over by another worker of the pool once it runs out.",
    )


class BatchSettings(_Group):
    """Batch video reprocessing."""

    workers: int = Field(
        default=2, ge=1, description="Workers a video batch starts (flow runs on batch-video)."
    )
    claim_size: int = Field(default=2, ge=1, description="Videos a batch worker claims at a time.")
    lease_seconds: float = Field(
        default=120.0,
        gt=1,
        description="A claimed video's lease; renewed every third of it while the worker "
        "lives, taken over by another worker once it runs out.",
    )
    max_attempts: int = Field(
        default=3, ge=1, description="Attempts per video before it is failed for good."
    )
    worker_deployment: str = Field(
        default="reprocess-worker/batch-video",
        description="Deployment a batch starts its workers from.",
    )


class BotSettings(_Group):
    """Discord bot requests."""

    config: str = Field(
        default="",
        description="The bot's routes, limits and providers (YAML); empty: the committed bot.yaml.",
    )
    request_lease_seconds: float = Field(
        default=60.0,
        gt=1,
        description="A running bot request's lease on its worker (renewed every third of it); "
        "a queued one waits twice its kind's deadline plus this before it is dispatched again.",
    )
    delivery_lease_seconds: float = Field(
        default=600.0,
        gt=1,
        description="How long one process delivers an answer alone: longer than any one "
        "delivery (a message may take 130 s of timeouts and Retry-After waits).",
    )
    attachment_limit_bytes: int = Field(
        default=10 * 1024 * 1024,
        gt=0,
        description="Largest file attached to a bot answer; larger ones are posted as a link.",
    )
    delivery_attempts: int = Field(
        default=16, ge=1, description="Posts of one bot answer tried before giving up."
    )
    delivery_retry_seconds: float = Field(
        default=30.0, gt=0, description="First wait before posting an undelivered answer again."
    )


class WebhookSettings(_Group):
    """Where Relay may post webhooks."""

    allowed_hosts: str = Field(
        default="",
        description="Comma-separated extra hosts (host or host:port) webhooks may point at, "
        "besides Discord's own.",
    )


class CallbackSettings(_Group):
    """Completion callbacks: the POST Relay sends to a job's ``callback_url`` when it ends
    (Standard Webhooks; docs/callbacks.md)."""

    signing_key: SecretStr = Field(
        default=SecretStr(""),
        description="Key that signs callbacks (HMAC-SHA256), as 'whsec_<base64 key>' or the "
        "base64 key alone; give receivers the same. Never the key that seals stored secrets "
        "(RELAY_SECRET_KEY). Empty: a callback_url is refused at intake (422).",
    )
    allow_private: bool = Field(
        default=False,
        description="Let callbacks go to private, loopback and link-local addresses (a lab or "
        "a test); off, only globally routable addresses are posted to, checked after DNS.",
    )
    attempts: int = Field(
        default=8, ge=1, le=50, description="POSTs of one callback tried before giving up."
    )
    inline_attempts: int = Field(
        default=2,
        ge=1,
        description="Of those, how many the process that ends the job tries at once; the "
        "rest are left due for the workers' maintenance passes.",
    )
    timeout_seconds: float = Field(
        default=10.0, gt=0, le=120, description="Timeout of one POST (connect, send, answer)."
    )
    backoff_seconds: float = Field(
        default=5.0, gt=0, description="Wait before the first retry; doubled after each failure."
    )
    backoff_max_seconds: float = Field(
        default=600.0, gt=0, description="Longest wait between two retries."
    )


GROUPS: tuple[str, ...] = (
    "asr",
    "chunk",
    "dask",
    "api",
    "transcribe",
    "job",
    "batch",
    "bot",
    "webhook",
    "callback",
    "discord",
    "objectives",
    "workers",
    "health",
    "metrics",
)


class RelaySettings(BaseSettings):
    """Every knob Relay reads, in groups. Each field is ``RELAY_<FIELD>`` in the environment,
    and each grouped field ``RELAY_<GROUP>_<FIELD>`` (``RELAY_ASR_MODEL`` is ``asr.model``):
    the names every deployment already uses."""

    model_config = SettingsConfigDict(
        env_prefix="RELAY_",
        extra="ignore",
        frozen=True,
        # RELAY_ASR_COMPUTE_TYPE -> asr.compute_type: split once, after the group's name.
        env_nested_delimiter="_",
        env_nested_max_split=1,
    )

    database_url: str = Field(
        default=f"sqlite:///{DEFAULT_STATE_DIR / 'relay.db'}",
        description="SQLAlchemy URL of the job store (SQLite by default, PostgreSQL in stacks).",
    )
    data_dir: str = Field(
        default=str(DEFAULT_STATE_DIR / "data"),
        description="Where job folders (chunks, transcripts) live: a local path or fsspec URL.",
    )
    max_audio_seconds: float = Field(
        default=1800.0, gt=0, description="Longest audio accepted; longer input is refused."
    )
    keep_chunks: bool = Field(
        default=False, description="Keep the chunk audio files after a job completes."
    )
    max_upload_bytes: int = Field(default=2 * 1024**3, gt=0, description="Largest upload.")
    source_roots: str = Field(
        default="",
        description="Comma-separated folders whose files clients may submit by path "
        "(default: <data_dir>/inbox). Paths elsewhere are refused.",
    )
    work_pool: str = Field(
        default="",
        description="Pool this process runs in (set by each pool's base job template); "
        "recorded on jobs started outside the API.",
    )
    short_audio_seconds: float = Field(
        default=300.0,
        ge=0,
        description="Files up to this long go to the pool's high-priority 'short' work queue.",
    )
    public_url: str = Field(
        default="", description="Base URL of this API as clients reach it (for status links)."
    )
    secret_key: SecretStr = Field(
        default=SecretStr(""),
        description="Seals webhook URLs kept in the job store (their tokens are secrets). Set "
        "the same value on every host; empty: a key generated once in .relay/secret.key.",
    )

    asr: AsrSettings = Field(default_factory=AsrSettings)
    chunk: ChunkSettings = Field(default_factory=ChunkSettings)
    dask: DaskSettings = Field(default_factory=DaskSettings)
    api: ApiSettings = Field(default_factory=ApiSettings)
    transcribe: TranscribeSettings = Field(default_factory=TranscribeSettings)
    job: JobSettings = Field(default_factory=JobSettings)
    batch: BatchSettings = Field(default_factory=BatchSettings)
    bot: BotSettings = Field(default_factory=BotSettings)
    webhook: WebhookSettings = Field(default_factory=WebhookSettings)
    callback: CallbackSettings = Field(default_factory=CallbackSettings)
    discord: DiscordSettings = Field(default_factory=DiscordSettings)
    objectives: ObjectivesSettings = Field(default_factory=ObjectivesSettings)
    workers: WorkersSettings = Field(default_factory=WorkersSettings)
    health: HealthSettings = Field(default_factory=HealthSettings)
    metrics: MetricsSettings = Field(default_factory=MetricsSettings)

    @model_validator(mode="before")
    @classmethod
    def _group_flat_names(cls, data: Any) -> Any:
        """``RelaySettings(asr_model="x")`` (a flat name, as in the environment) means
        ``asr.model``: code and tests may use either."""
        return _grouped(data, set(cls.model_fields)) if isinstance(data, dict) else data

    def model_copy(
        self, *, update: Mapping[str, Any] | None = None, deep: bool = False
    ) -> RelaySettings:
        """A copy with ``update`` applied, validated; flat names (``transcribe_via``) reach
        their group's field, as in the constructor, instead of being set beside it."""
        if not update:
            return super().model_copy(deep=deep)
        # A Python-mode dump keeps SecretStr values as they are: nothing is masked here.
        merged = {**self.model_dump(), **update}
        return type(self).model_validate(_grouped(merged, set(type(self).model_fields)))

    @classmethod
    def environment_names(cls) -> set[str]:
        """Every ``RELAY_*`` variable the settings read."""
        names = set()
        for name, field in cls.model_fields.items():
            group = field.annotation
            if name in GROUPS and isinstance(group, type) and issubclass(group, BaseModel):
                names |= {f"RELAY_{name}_{sub}".upper() for sub in group.model_fields}
            else:
                names.add(f"RELAY_{name.upper()}")
        return names

    def allowed_source_roots(self) -> list[Path]:
        """Folders whose files may be submitted by path."""
        roots = [r.strip() for r in self.source_roots.split(",") if r.strip()]
        return [Path(r).resolve() for r in roots] or [Path(self.data_dir).resolve() / "inbox"]


def _grouped(data: dict[str, Any], fields: set[str]) -> dict[str, Any]:
    """``data`` with every flat grouped name (``asr_model``) moved into its group."""
    data = dict(data)
    for key in [k for k in data if k.split("_", 1)[0] in GROUPS]:
        group, _, field = key.partition("_")
        if key in fields or not field:
            continue
        current = data.get(group) or {}
        if isinstance(current, BaseModel):
            current = current.model_dump()
        data[group] = {**current, field: data.pop(key)}
    return data


@lru_cache(maxsize=1)
def get_settings() -> RelaySettings:
    """The process-wide settings, read once from the environment."""
    return RelaySettings()


def reload_settings() -> RelaySettings:
    """Forget the cached settings (tests change the environment) and read them again."""
    get_settings.cache_clear()
    return get_settings()
