"""The settings object: typed groups inside, the same RELAY_* names outside."""

from __future__ import annotations

import re

import pytest
from pydantic import SecretStr, ValidationError

from relay_settings import RelaySettings
from tests.environ import environment

# Every variable a deployment of the previous release may set, with a value and where it
# must land. A name that stops working fails here.
EARLIER_NAMES = {
    "RELAY_DATABASE_URL": ("sqlite:////tmp/x.db", lambda s: s.database_url),
    "RELAY_DATA_DIR": ("/tmp/data", lambda s: s.data_dir),
    "RELAY_MAX_AUDIO_SECONDS": ("60.5", lambda s: s.max_audio_seconds),
    "RELAY_ASR_MODEL": ("small.en", lambda s: s.asr.model),
    "RELAY_ASR_DEVICE": ("cuda", lambda s: s.asr.device),
    "RELAY_ASR_COMPUTE_TYPE": ("float16", lambda s: s.asr.compute_type),
    "RELAY_ASR_CPU_THREADS": ("2", lambda s: s.asr.cpu_threads),
    "RELAY_ASR_BEAM_SIZE": ("3", lambda s: s.asr.beam_size),
    "RELAY_ASR_CONDITION_ON_PREVIOUS_TEXT": ("true", lambda s: s.asr.condition_on_previous_text),
    "RELAY_ASR_PAUSE_WINDOWS": ("false", lambda s: s.asr.pause_windows),
    "RELAY_ASR_WINDOW_BATCH": ("3", lambda s: s.asr.window_batch),
    "RELAY_CHUNK_TARGET_SECONDS": ("90.5", lambda s: s.chunk.target_seconds),
    "RELAY_CHUNK_FIRST_SECONDS": ("20.5", lambda s: s.chunk.first_seconds),
    "RELAY_KEEP_CHUNKS": ("true", lambda s: s.keep_chunks),
    "RELAY_DASK_ADDRESS": ("tcp://10.0.0.1:8786", lambda s: s.dask.address),
    "RELAY_DASK_WORKERS": ("3", lambda s: s.dask.workers),
    "RELAY_API_HOST": ("0.0.0.0", lambda s: s.api.host),
    "RELAY_API_PORT": ("9000", lambda s: s.api.port),
    "RELAY_TRANSCRIBE_VIA": ("task-worker", lambda s: s.transcribe.via),
    "RELAY_TRANSCRIBE_DEPLOYMENT": ("transcribe/asr-gpu", lambda s: s.transcribe.deployment),
    "RELAY_BATCH_WORKERS": ("4", lambda s: s.batch.workers),
    "RELAY_BATCH_WORKER_DEPLOYMENT": ("w/b", lambda s: s.batch.worker_deployment),
    "RELAY_BATCH_LEASE_SECONDS": ("30.5", lambda s: s.batch.lease_seconds),
    "RELAY_BOT_DELIVERY_ATTEMPTS": ("5", lambda s: s.bot.delivery_attempts),
    "RELAY_WEBHOOK_ALLOWED_HOSTS": ("127.0.0.1:1", lambda s: s.webhook.allowed_hosts),
    "RELAY_DISCORD_BLOCK": ("elsewhere", lambda s: s.discord.block),
    "RELAY_DISCORD_ADMIN_BLOCK": ("admins", lambda s: s.discord.admin_block),
    "RELAY_DISCORD_ALERTS_BLOCK": ("on-call", lambda s: s.discord.alerts_block),
    "RELAY_DISCORD_PUBLIC_KEY": ("ab" * 32, lambda s: s.discord.public_key),
    "RELAY_DISCORD_APPLICATION_ID": ("123456789012345678", lambda s: s.discord.application_id),
    "RELAY_DISCORD_API_URL": ("http://127.0.0.1:1/api/v10", lambda s: s.discord.api_url),
    "RELAY_DISCORD_GUILDS": ("1,2", lambda s: s.discord.guilds),
    "RELAY_DISCORD_ALLOW_DMS": ("true", lambda s: s.discord.allow_dms),
    "RELAY_DISCORD_COMMANDS": (
        "global=chat;700000000000000001=admin",
        lambda s: s.discord.commands,
    ),
    "RELAY_DISCORD_EXPIRY_NOTICE_SECONDS": ("600.5", lambda s: s.discord.expiry_notice_seconds),
    "RELAY_DISCORD_EXPIRY_NOTICE_LEASE_SECONDS": (
        "20.5",
        lambda s: s.discord.expiry_notice_lease_seconds,
    ),
    "RELAY_DISCORD_ATTACHMENT_HOSTS": ("cdn.example", lambda s: s.discord.attachment_hosts),
    "RELAY_DISCORD_PROGRESS_SECONDS": ("2.5", lambda s: s.discord.progress_seconds),
    "RELAY_WORK_POOL": ("asr-gpu", lambda s: s.work_pool),
    "RELAY_ASR_VAD_FILTER": ("true", lambda s: s.asr.vad_filter),
    "RELAY_CHUNK_SEARCH_SECONDS": ("15.5", lambda s: s.chunk.search_seconds),
    "RELAY_CHUNK_TIMEOUT_SECONDS": ("600.5", lambda s: s.chunk.timeout_seconds),
    "RELAY_CHUNK_RETRIES": ("1", lambda s: s.chunk.retries),
    "RELAY_API_ACCESS_LOG": ("false", lambda s: s.api.access_log),
    "RELAY_API_WORKERS": ("2", lambda s: s.api.workers),
    "RELAY_MAX_UPLOAD_BYTES": ("1000", lambda s: s.max_upload_bytes),
    "RELAY_SOURCE_ROOTS": ("/srv/in", lambda s: s.source_roots),
    "RELAY_SHORT_AUDIO_SECONDS": ("120.5", lambda s: s.short_audio_seconds),
    "RELAY_PUBLIC_URL": ("https://relay.example", lambda s: s.public_url),
    "RELAY_BATCH_CLAIM_SIZE": ("3", lambda s: s.batch.claim_size),
    "RELAY_BATCH_MAX_ATTEMPTS": ("4", lambda s: s.batch.max_attempts),
    "RELAY_BOT_CONFIG": ("/srv/bot.yaml", lambda s: s.bot.config),
    "RELAY_BOT_ATTACHMENT_LIMIT_BYTES": ("2048", lambda s: s.bot.attachment_limit_bytes),
    "RELAY_BOT_DELIVERY_RETRY_SECONDS": ("5.5", lambda s: s.bot.delivery_retry_seconds),
    "RELAY_JOB_LEASE_SECONDS": ("30.5", lambda s: s.job.lease_seconds),
    "RELAY_BOT_REQUEST_LEASE_SECONDS": ("45.5", lambda s: s.bot.request_lease_seconds),
    "RELAY_BOT_DELIVERY_LEASE_SECONDS": ("300.5", lambda s: s.bot.delivery_lease_seconds),
    "RELAY_CALLBACK_ALLOW_PRIVATE": ("true", lambda s: s.callback.allow_private),
    "RELAY_CALLBACK_ATTEMPTS": ("4", lambda s: s.callback.attempts),
    "RELAY_CALLBACK_INLINE_ATTEMPTS": ("3", lambda s: s.callback.inline_attempts),
    "RELAY_CALLBACK_TIMEOUT_SECONDS": ("2.5", lambda s: s.callback.timeout_seconds),
    "RELAY_CALLBACK_BACKOFF_SECONDS": ("1.5", lambda s: s.callback.backoff_seconds),
    "RELAY_CALLBACK_BACKOFF_MAX_SECONDS": ("60.5", lambda s: s.callback.backoff_max_seconds),
    "RELAY_OBJECTIVES_QUEUE_AGE_SECONDS": ("300.5", lambda s: s.objectives.queue_age_seconds),
    "RELAY_OBJECTIVES_QUEUE_AGE_BY_POOL": ("bot-chat=30", lambda s: s.objectives.queue_age_by_pool),
    "RELAY_OBJECTIVES_BOT_LATENCY_P95_SECONDS": (
        "1.5",
        lambda s: s.objectives.bot_latency_p95_seconds,
    ),
    "RELAY_OBJECTIVES_BOT_LATENCY_BY_KIND": ("chat=1", lambda s: s.objectives.bot_latency_by_kind),
    "RELAY_OBJECTIVES_ERROR_RATIO": ("0.02", lambda s: s.objectives.error_ratio),
    "RELAY_OBJECTIVES_ERROR_WINDOW_SECONDS": ("300.5", lambda s: s.objectives.error_window_seconds),
    "RELAY_OBJECTIVES_QUOTA_LEFT_RATIO": ("0.2", lambda s: s.objectives.quota_left_ratio),
    "RELAY_OBJECTIVES_WORKER_SILENT_SECONDS": (
        "45.5",
        lambda s: s.objectives.worker_silent_seconds,
    ),
    "RELAY_OBJECTIVES_DOWN_FOR_SECONDS": ("60.5", lambda s: s.objectives.down_for_seconds),
    "RELAY_OBJECTIVES_LATE_RUNS_FOR_SECONDS": (
        "120.5",
        lambda s: s.objectives.late_runs_for_seconds,
    ),
    "RELAY_OBJECTIVES_BEHIND_WINDOW_SECONDS": (
        "900.5",
        lambda s: s.objectives.behind_window_seconds,
    ),
    "RELAY_OBJECTIVES_RUNBOOK_URL": ("https://x.example/r.md", lambda s: s.objectives.runbook_url),
    "RELAY_WORKERS_HEARTBEAT_SECONDS": ("2.5", lambda s: s.workers.heartbeat_seconds),
    "RELAY_WORKERS_FORGET_SECONDS": ("3600.5", lambda s: s.workers.forget_seconds),
    "RELAY_WORKERS_STOP_SECONDS": ("7.5", lambda s: s.workers.stop_seconds),
    "RELAY_HEALTH_TIMEOUT_SECONDS": ("1.5", lambda s: s.health.timeout_seconds),
    "RELAY_METRICS_HTTP": ("false", lambda s: s.metrics.http),
    "RELAY_METRICS_WORKER_PORT": ("9101", lambda s: s.metrics.worker_port),
    "RELAY_METRICS_WORKER_HOST": ("0.0.0.0", lambda s: s.metrics.worker_host),
    "RELAY_METRICS_MULTIPROC_DIR": ("/tmp/relay-metrics", lambda s: s.metrics.multiproc_dir),
    "RELAY_METRICS_PREFECT_TIMEOUT_SECONDS": ("1.5", lambda s: s.metrics.prefect_timeout_seconds),
}
# Checked by the secrets test below.
SECRETS = {
    "RELAY_API_TOKEN",
    "RELAY_SECRET_KEY",
    "RELAY_CALLBACK_SIGNING_KEY",
    "RELAY_METRICS_TOKEN",
    "RELAY_DISCORD_BOT_TOKEN",
}


def test_every_setting_is_in_the_list_above():
    assert set(EARLIER_NAMES) | SECRETS == RelaySettings.environment_names()


@pytest.mark.parametrize("name", sorted(EARLIER_NAMES))
def test_every_earlier_variable_keeps_its_name(name):
    value, read = EARLIER_NAMES[name]
    with environment({name: value}) as settings:
        assert str(read(settings)).lower() == value.lower()
    assert name in RelaySettings.environment_names()


def test_secrets_are_secret_strings_that_never_print():
    secrets = {
        "RELAY_API_TOKEN": "tok-123",
        "RELAY_SECRET_KEY": "key-456",
        "RELAY_CALLBACK_SIGNING_KEY": "whsec_c2lnbi03ODk=",
        "RELAY_METRICS_TOKEN": "scrape-012",
        "RELAY_DISCORD_BOT_TOKEN": "bot-345",
    }
    with environment(secrets) as settings:
        assert isinstance(settings.api.token, SecretStr)
        assert settings.api.token.get_secret_value() == "tok-123"
        assert settings.secret_key.get_secret_value() == "key-456"
        assert settings.callback.signing_key.get_secret_value() == "whsec_c2lnbi03ODk="
        assert settings.metrics.token.get_secret_value() == "scrape-012"
        assert settings.discord.bot_token.get_secret_value() == "bot-345"
        shown = repr(settings) + str(settings) + settings.model_dump_json()
    assert not any(value in shown for value in secrets.values())


def test_a_choice_outside_its_literal_is_refused_by_name():
    with pytest.raises(ValidationError, match=r"asr\.device"):
        RelaySettings(asr_device="tpu")
    with pytest.raises(ValidationError, match=r"transcribe\.via"):
        RelaySettings(transcribe_via="carrier-pigeon")


def test_flat_and_grouped_names_build_the_same_settings():
    flat = RelaySettings(asr_model="small.en", api_port=9001, batch_workers=5)
    grouped = RelaySettings(asr={"model": "small.en"}, api={"port": 9001}, batch={"workers": 5})
    assert flat == grouped
    assert flat.asr.beam_size == 5  # the rest of a group keeps its defaults


def test_a_copy_with_a_flat_name_changes_its_groups_field():
    settings = RelaySettings(api_token="tok", asr_model="small.en")
    copy = settings.model_copy(update={"transcribe_via": "task-worker", "max_audio_seconds": 9})
    assert (copy.transcribe.via, copy.max_audio_seconds) == ("task-worker", 9.0)
    assert (copy.asr.model, copy.api.token.get_secret_value()) == ("small.en", "tok")
    assert settings.transcribe.via == "deployment"  # the original is left as it was
    with pytest.raises(ValidationError, match=r"transcribe\.via"):
        settings.model_copy(update={"transcribe_via": "carrier-pigeon"})


def test_objectives_take_per_pool_and_per_kind_overrides_and_refuse_nonsense():
    settings = RelaySettings(objectives_queue_age_by_pool="asr-cpu=30, bot-chat=5")
    assert settings.objectives.queue_age_for("asr-cpu") == 30.0
    assert settings.objectives.queue_age_for("asr-gpu") == settings.objectives.queue_age_seconds
    assert RelaySettings().objectives.bot_latency_for("video") == 30.0
    for bad in ("asr-cpu", "asr-cpu=0", "=5", "asr-cpu=soon"):
        with pytest.raises(ValidationError, match=r"objectives\.queue_age_by_pool"):
            RelaySettings(objectives_queue_age_by_pool=bad)


def test_discord_commands_name_sets_per_scope_and_refuse_a_bad_part_by_name():
    scopes = RelaySettings().discord.command_scopes()
    assert [(s.guild_id, s.sets) for s in scopes] == [(None, ("chat", "media", "transcribe"))]
    scopes = RelaySettings(
        discord_commands=" global = chat ; 700000000000000001=admin,media"
    ).discord.command_scopes()
    assert [(s.label, s.sets) for s in scopes] == [
        ("global", ("chat",)),
        ("guild 700000000000000001", ("admin", "media")),
    ]
    assert RelaySettings(discord_commands="global=").discord.command_scopes()[0].sets == ()
    bad = {
        "chat": r"'chat' has no '='",
        "global=chat;guild=admin": r"'guild' in 'guild=admin' is neither 'global' nor a guild id",
        "global=chat,medias": r"unknown command set 'medias' in 'global=chat,medias'",
        "global=chat;1=admin;1=media": r"1 is named twice",
        "700000000000000001=admin": r"does not say what is global",
        "": r"does not say what is global",
        "global=chat;7=chat,admin": r"chat would be registered both globally and in guild 7",
    }
    for value, message in bad.items():
        with pytest.raises(ValidationError, match=r"discord\.commands") as refused:
            RelaySettings(discord_commands=value)
        assert re.search(message, str(refused.value)), (value, str(refused.value))
