"""Relay's one settings object: environment variables with the ``RELAY_`` prefix."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Literal

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

PROJECT_ROOT = Path(__file__).resolve().parent
DEFAULT_STATE_DIR = PROJECT_ROOT / ".relay"
BUNDLED_MODEL = "tiny.en"


class RelaySettings(BaseSettings):
    """Every knob Relay reads; each field is ``RELAY_<FIELD>`` in the environment."""

    model_config = SettingsConfigDict(env_prefix="RELAY_", extra="ignore")

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

    asr_model: str = Field(
        default=BUNDLED_MODEL,
        description="faster-whisper model: 'tiny.en' (bundled), a model name or a local path.",
    )
    asr_device: str = Field(default="cpu", description="'cpu', 'cuda' or 'auto'.")
    asr_compute_type: str = Field(default="int8", description="CTranslate2 compute type.")
    asr_cpu_threads: int = Field(
        default=1, ge=0, description="Threads per Dask worker's model (0: CTranslate2 default)."
    )
    asr_beam_size: int = Field(default=5, ge=1, le=20, description="Beam size for decoding.")
    asr_vad_filter: bool = Field(
        default=False, description="Run faster-whisper's Silero VAD inside each chunk."
    )
    asr_condition_on_previous_text: bool = Field(
        default=False,
        description="Prompt each 30 s window with the text decoded before it (faster-whisper's "
        "default). Off: every window decodes with a short prompt, about 25 % faster at the "
        "same accuracy on Relay's silence-cut chunks (bench/asr.py), as the batched pipeline "
        "does; on: more consistent spelling of names across a chunk.",
    )

    chunk_target_seconds: float = Field(
        default=120.0, gt=5, description="Aimed-for chunk length when splitting on silence."
    )
    chunk_first_seconds: float = Field(
        default=30.0,
        ge=0,
        description="Aimed-for length of a job's first chunk (0: like the others); short, "
        "so that its text, and the job's progress, come back within seconds.",
    )
    chunk_search_seconds: float = Field(
        default=20.0,
        gt=0,
        description="How far either side of a target boundary to look for silence.",
    )
    chunk_timeout_seconds: float = Field(
        default=900.0, gt=0, description="A chunk's transcription is abandoned after this long."
    )
    chunk_retries: int = Field(default=2, ge=0, description="Retries of a failed chunk.")
    keep_chunks: bool = Field(
        default=False, description="Keep the chunk audio files after a job completes."
    )

    dask_address: str = Field(
        default="", description="Scheduler of an existing Dask cluster; empty: a LocalCluster."
    )
    dask_workers: int = Field(
        default=0, ge=0, description="Worker processes of the LocalCluster (0: one per core)."
    )

    api_token: str = Field(default="", description="Bearer token the REST API requires.")
    api_host: str = Field(default="127.0.0.1", description="Address the REST API binds to.")
    api_port: int = Field(default=8000, description="Port of the REST API.")
    api_access_log: bool = Field(
        default=True, description="Log one line per API request (uvicorn's access log)."
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
    transcribe_deployment: str = Field(
        default="transcribe/asr-cpu", description="Deployment that API submissions run on."
    )
    transcribe_via: Literal["deployment", "task-worker"] = Field(
        default="deployment",
        description="How API submissions run: 'deployment' (a flow run on the pool's worker) "
        "or 'task-worker' (a background task on the pool's warm task worker, "
        "`python -m cli worker`: starts in about a second).",
    )
    short_audio_seconds: float = Field(
        default=300.0,
        ge=0,
        description="Files up to this long go to the pool's high-priority 'short' work queue.",
    )
    webhook_allowed_hosts: str = Field(
        default="",
        description="Comma-separated extra hosts (host or host:port) webhooks may point at, "
        "besides Discord's own.",
    )
    discord_block: str = Field(
        default="relay-discord", description="Name of the Discord destination block to notify."
    )
    public_url: str = Field(
        default="", description="Base URL of this API as clients reach it (for status links)."
    )

    batch_workers: int = Field(
        default=2, ge=1, description="Workers a video batch starts (flow runs on batch-video)."
    )
    batch_claim_size: int = Field(
        default=2, ge=1, description="Videos a batch worker claims at a time."
    )
    batch_lease_seconds: float = Field(
        default=120.0,
        gt=1,
        description="A claimed video's lease; renewed every third of it while the worker "
        "lives, taken over by another worker once it runs out.",
    )
    job_lease_seconds: float = Field(
        default=60.0,
        gt=1,
        description="A transcription job's lease on its task worker; renewed every third of "
        "it while the worker lives, taken over by another worker of the pool once it runs out.",
    )
    batch_max_attempts: int = Field(
        default=3, ge=1, description="Attempts per video before it is failed for good."
    )
    batch_worker_deployment: str = Field(
        default="reprocess-worker/batch-video",
        description="Deployment a batch starts its workers from.",
    )

    secret_key: str = Field(
        default="",
        description="Seals webhook URLs kept in the job store (their tokens are secrets). Set "
        "the same value on every host; empty: a key generated once in .relay/secret.key.",
    )
    bot_request_lease_seconds: float = Field(
        default=60.0,
        gt=1,
        description="A running bot request's lease on its worker (renewed every third of it); "
        "a queued one waits twice its kind's deadline plus this before it is dispatched again.",
    )
    bot_delivery_lease_seconds: float = Field(
        default=600.0,
        gt=1,
        description="How long one process delivers an answer alone: longer than any one "
        "delivery (a message may take 130 s of timeouts and Retry-After waits).",
    )
    bot_attachment_limit_bytes: int = Field(
        default=10 * 1024 * 1024,
        gt=0,
        description="Largest file attached to a bot answer; larger ones are posted as a link.",
    )
    bot_delivery_attempts: int = Field(
        default=16, ge=1, description="Posts of one bot answer tried before giving up."
    )
    bot_delivery_retry_seconds: float = Field(
        default=30.0, gt=0, description="First wait before posting an undelivered answer again."
    )

    def allowed_source_roots(self) -> list[Path]:
        """Folders whose files may be submitted by path."""
        roots = [r.strip() for r in self.source_roots.split(",") if r.strip()]
        return [Path(r).resolve() for r in roots] or [Path(self.data_dir).resolve() / "inbox"]


@lru_cache(maxsize=1)
def get_settings() -> RelaySettings:
    """The process-wide settings, read once from the environment."""
    return RelaySettings()


def reload_settings() -> RelaySettings:
    """Forget the cached settings (tests change the environment) and read them again."""
    get_settings.cache_clear()
    return get_settings()
