"""``/status JOB`` from Discord: a transcription job's status, shown only to the user.

The answer is the job as ``GET /api/transcriptions/{id}`` shows it (``api.transcriptions
.view``: status, progress, ETA), in a few lines; a completed job's answer starts its
transcript and says where the whole of it is read. Anyone who may use Relay's commands may
read any job by its id: ids are random UUIDs, given only to whoever submitted the job
(docs/discord-admin.md).
"""

from __future__ import annotations

import asyncio
import logging
import re

import fsspec
from fastapi import BackgroundTasks, Request

from api import reads
from api.discord_schemas import Interaction, InteractionResponse, ephemeral
from api.schemas import JobStatusView
from api.transcriptions import transcript_path, view
from store import callbacks
from store.models import JobStatus

log = logging.getLogger("relay.interactions")
# How much of a completed job's transcript the answer shows (Discord allows 2,000 in all).
TRANSCRIPT_START_CHARS = 900
MESSAGE_LIMIT = 2000  # Discord's limit on a message's content
# How long the answer waits for the store and for the transcript's file (Discord waits 3 s).
STATUS_READ_SECONDS = 1.5
TRANSCRIPT_READ_SECONDS = 0.8
_JOB_ID = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
_FORMATS = ("txt", "srt", "vtt", "json")


async def status_command(
    request: Request,  # noqa: ARG001 (a command handler's signature)
    interaction: Interaction,
    background: BackgroundTasks,  # noqa: ARG001
) -> InteractionResponse:
    """The job named by the ``job`` option, as an ephemeral message."""
    job_id = str(interaction.option("job") or "").strip()
    if not _JOB_ID.match(job_id):
        return ephemeral(
            "No transcription job with that id: give the job id Relay answered your upload "
            "with (32 letters and digits)."
        )
    try:
        found = await reads.within(STATUS_READ_SECONDS, reads.read(_status_of, job_id))
    except TimeoutError:
        return ephemeral(
            f"Relay's store did not answer within {STATUS_READ_SECONDS:g} s. Try again in a minute."
        )
    if found is None:
        return ephemeral(f"No transcription job `{job_id}`.")
    job, path = found
    start = await _transcript_start(path) if path is not None else None
    return ephemeral(status_text(job, start))


def _status_of(job_id: str) -> tuple[JobStatusView, str | None] | None:
    """The job as its GET shows it, and its transcript's path once it is completed; one
    read in the worker thread (the view's ETA may query the store too)."""
    found = callbacks.job_and_callback(job_id)
    if found is None:
        return None
    job = found[0]
    path = transcript_path(job) if job.status == JobStatus.COMPLETED else None
    return view(*found), path


async def _transcript_start(path: str) -> str | None:
    """The transcript's first characters; None when it cannot be read in time."""
    try:
        return await reads.within(
            TRANSCRIPT_READ_SECONDS, asyncio.to_thread(_read_start, path, TRANSCRIPT_START_CHARS)
        )
    except TimeoutError:
        log.warning("/status: the transcript was not read within %s s", TRANSCRIPT_READ_SECONDS)
    except OSError as err:  # gone, or storage unreachable: the answer says where to fetch it
        log.warning("/status: the transcript could not be read: %s", type(err).__name__)
    return None


def _read_start(path: str, chars: int) -> str:
    with fsspec.open(path, "r", encoding="utf-8") as handle:
        text: str = handle.read(chars + 1)
    return text


def status_text(job: JobStatusView, transcript: str | None = None) -> str:
    """The job in a few lines of Discord markdown (under 2,000 characters)."""
    name = _plain(job.file_name)[:100]
    lines = [f"**{name}**: {job.status}, {job.progress_percent:g} %"]
    if job.chunks.total:
        lines.append(
            f"Chunks: {job.chunks.done} of {job.chunks.total} done"
            + (f", {job.chunks.failed} failed" if job.chunks.failed else "")
        )
    if job.duration_seconds:
        lines.append(
            f"Audio: {job.audio_seconds_done:g} of {job.duration_seconds:.1f} s transcribed"
            + (f" ({job.language})" if job.language else "")
        )
    if job.eta_seconds is not None:
        lines.append(f"Done in about {_duration(job.eta_seconds)}.")
    if job.error:
        lines.append(f"Error: {_plain(job.error)[:300]}")
    ending = [f"Job `{job.job_id}`"]
    if job.status == JobStatus.COMPLETED:
        formats = ", ".join(_FORMATS[1:])
        ending.insert(
            0,
            f"Whole transcript: `{job.status_url}/transcript?format=txt` "
            f"(or {formats}; the API's token is needed).",
        )
        if transcript:
            room = MESSAGE_LIMIT - len("\n".join([*lines, *ending])) - len("\nTranscript:")
            lines += ["Transcript:", *_quoted(transcript, room)]
    return "\n".join([*lines, *ending])


def _quoted(transcript: str, room: int) -> list[str]:
    """The transcript's start as quoted lines, in ``room`` characters (newlines counted)."""
    cut = len(transcript) > TRANSCRIPT_START_CHARS
    start = transcript[:TRANSCRIPT_START_CHARS].strip() + ("…" if cut else "")
    quoted: list[str] = []
    for line in (line for line in start.splitlines() if line.strip()):
        if len(line.strip()) + 3 > room - 4:  # the line, its "> " and newline; "\n> …" must fit
            quoted.append("> …")
            break
        quoted.append(f"> {line.strip()}")
        room -= len(line.strip()) + 3
    return quoted


def _duration(seconds: float) -> str:
    if seconds < 90:
        return f"{max(round(seconds), 1)} s"
    if seconds < 5400:
        return f"{round(seconds / 60)} min"
    return f"{seconds / 3600:.1f} h"


def _plain(text: str) -> str:
    """Text shown as it is: no code spans or mentions broken out of (backticks, @)."""
    return text.replace("`", "'").replace("@", "@\u200b")
