"""``/transcribe`` from Discord: the attached file becomes a transcription job, answered on
the interaction (docs/discord-transcribe.md).

Within Discord's 3 s, what needs no download is checked: the attachment's host (Discord's
CDN, ``RELAY_DISCORD_ATTACHMENT_HOSTS``), its declared size (``RELAY_MAX_UPLOAD_BYTES``), the
language against the model, and the user's cooldown and daily limits (kind ``transcribe``
of bot.yaml); a refusal is a message only the user sees. Otherwise the answer is deferred,
and in the background the file is downloaded (stopped at the size limit, whatever it
declared), checked as an upload is (api/transcription_intake.py) and handed to Prefect. A
refusal from then on, and the accepted job, are told by editing the interaction's message;
the job's progress and end follow (tasks/interaction_progress.py, interaction_reply.py).
"""

from __future__ import annotations

import logging
import re
import shutil
from pathlib import Path

from fastapi import BackgroundTasks, Request
from fastapi.concurrency import run_in_threadpool

from api.discord_schemas import (
    Attachment,
    Interaction,
    InteractionResponse,
    deferred,
    ephemeral,
)
from api.errors import ApiError
from api.interaction_requests import retry_message
from api.schemas import UploadFields
from api.transcription_intake import accept
from api.uploads import Submission, safe_name
from bot_config import TRANSCRIBE, get_bot_config
from relay_pools import get_pool
from relay_settings import RelaySettings, english_only
from store import usage
from store.models import new_id
from tasks.discord_attachments import DownloadError, download, refused_host, too_large
from tasks.discord_webhook import WebhookMessage, edit_original

log = logging.getLogger("relay.discord")
LANGUAGE = re.compile(r"^[a-z]{2,3}$")


async def transcribe_command(
    request: Request, interaction: Interaction, background: BackgroundTasks
) -> InteractionResponse:
    """Refuse at once what can be refused without the file; else defer, and take the file
    in in the background (its answer comes by editing the interaction's message)."""
    settings: RelaySettings = request.app.state.settings
    attachment = interaction.attachment("file")
    if attachment is None:
        return ephemeral("Attach the audio or video file to transcribe (the `file` option).")
    allowed = settings.discord.attachment_host_list()
    host = refused_host(attachment.url, allowed)
    if host is not None:
        return ephemeral(
            f"Relay does not download files from {host}: attachments must come from "
            f"Discord's CDN ({', '.join(sorted(allowed))})."
        )
    if attachment.size > settings.max_upload_bytes:
        return ephemeral(
            f"Relay cannot transcribe `{attachment.filename}`: "
            f"{too_large(settings.max_upload_bytes, attachment.size)}."
        )
    language, problem = _language(interaction.option("language"), _model(settings))
    if problem:
        return ephemeral(problem)
    limits = get_bot_config().limits_of(TRANSCRIBE)
    admission = await run_in_threadpool(
        usage.admit,
        interaction.user_id,
        TRANSCRIBE,
        cooldown_seconds=limits.cooldown_seconds,
        per_user_daily=limits.per_user_daily,
        global_daily=limits.global_daily,
    )
    if not admission.admitted:
        return ephemeral(retry_message(admission))
    follow_up = settings.discord.followup_url(interaction.token)
    background.add_task(take_in, request, attachment, language, follow_up)
    return deferred()


async def take_in(
    request: Request, attachment: Attachment, language: str | None, follow_up: str
) -> None:
    """Download the attachment, check it as an upload and hand its job to Prefect; tell
    the interaction either way by editing its message. Never raises."""
    settings: RelaySettings = request.app.state.settings
    job_id = new_id()
    folder = Path(settings.data_dir) / "uploads" / job_id
    source = folder / safe_name(attachment.filename)
    try:
        await download(attachment.url, source, settings.max_upload_bytes)
        # Said before the job is handed over: from then on only its worker edits the
        # message (progress, then the end), so no edit of ours can land after theirs.
        await _edit(
            follow_up,
            f"⏳ `{attachment.filename}` received: checking it and queuing it. Job `{job_id}`.",
        )
        submission = Submission(source, UploadFields(language=language), True, "")
        await accept(request, settings, job_id, submission, follow_up=follow_up)
    except Exception as err:
        await run_in_threadpool(shutil.rmtree, folder, ignore_errors=True)
        if not isinstance(err, ApiError | DownloadError):
            log.exception("/transcribe: %s not taken in", source.name)
        await _edit(follow_up, _refusal(attachment.filename, source.name, err))


def _refusal(filename: str, saved_as: str, err: Exception) -> str:
    """What the user reads when the file was not taken in after the answer was deferred."""
    if isinstance(err, ApiError):
        reason = err.message.removeprefix(f"{saved_as}: ")
        later = " Try again in a minute." if err.status >= 500 else ""
    elif isinstance(err, DownloadError):
        reason = str(err)
        later = "" if err.too_large else " Try again in a minute."
    else:
        reason, later = "Relay could not take it in", " Try again in a minute."
    return f"⚠️ Relay cannot transcribe `{filename}`: {reason}.{later}"[:2000]


async def _edit(follow_up: str, text: str) -> None:
    """Edit the interaction's message (Relay's deferred answer) to ``text``."""
    await run_in_threadpool(
        edit_original, follow_up, WebhookMessage(text), label="/transcribe answer"
    )


def _model(settings: RelaySettings) -> str:
    """The model the job will run with: its pool's (pools.yaml), else RELAY_ASR_MODEL."""
    pool = settings.transcribe.deployment.split("/")[-1]
    try:
        model = get_pool(pool).options.get("model")
    except ValueError:  # a deployment outside the registry: the settings say
        model = None
    return model or settings.asr.model


def _language(given: object, model: str) -> tuple[str | None, str | None]:
    """The language asked for (None: detected) and, when it cannot be had, why."""
    if given is None or str(given).strip() == "":
        return None, None
    language = str(given).strip().lower()
    if not LANGUAGE.fullmatch(language):
        return None, f"`{str(given)[:16]}` is not a language code: give one like en, fr or de."
    if language != "en" and english_only(model):
        return None, (
            f"Relay's speech model ({model}) transcribes English only, so it cannot take "
            f"{language}: leave `language` out or give en."
        )
    return language, None
