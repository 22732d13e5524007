"""The answer to ``/transcribe`` on Discord: the job's first message (the interaction's
``@original``, edited as the job moves) and, when it ends, a follow-up on the interaction's
webhook with the start of the transcript inline and its .txt and .srt attached.

The follow-up is the job's callback of kind ``discord`` (store/callbacks.py): due in the
transaction that ends the job, posted by the process that ended it (``deliver_now``) and
retried by the workers' maintenance passes like every callback.
"""

from __future__ import annotations

from pathlib import PurePosixPath

import fsspec

from store import jobs, status
from store.models import JobStatus, TranscriptionJob
from tasks.discord_limits import CONTENT_LIMIT, safe_file_name, truncate
from tasks.discord_webhook import (
    Attachment,
    DeliveryOutcome,
    DeliveryResult,
    WebhookMessage,
    edit_original,
    post_messages,
)
from tasks.media import clock

INLINE_CHARS = 1500  # of the transcript, in the follow-up's text; the files hold all of it
FULL_TEXT_ATTACHED = "… (full text attached)"


def status_line(job: TranscriptionJob) -> str:
    """What the interaction's first message says of the job now (one line)."""
    name = f"`{job.source_name}`"
    if job.duration_seconds:
        name += f" ({clock(job.duration_seconds)})"
    tail = f" Job `{job.id}`."
    if job.status == JobStatus.COMPLETED:
        return f"✅ Transcribed {name}; the transcript follows.{tail}"
    if job.status == JobStatus.FAILED:
        return f"⚠️ Relay could not transcribe {name}.{tail}"
    if job.status == JobStatus.CANCELLED:
        return f"Transcription of {name} was cancelled.{tail}"
    if job.status == JobStatus.RUNNING:
        return f"⏳ Transcribing {name}: {status.progress_percent(job):.0f} %.{tail}"
    return f"⏳ {name} is queued for transcription.{tail}"


def follow_up_message(job: TranscriptionJob) -> WebhookMessage:
    """The follow-up that tells how the job ended: the transcript, or why there is none."""
    name = f"`{job.source_name}`"
    if job.status == JobStatus.FAILED:
        reason = job.error or "no reason was recorded"
        return WebhookMessage(truncate(f"⚠️ Relay could not transcribe {name}: {reason}", 2000))
    if job.status == JobStatus.CANCELLED:
        return WebhookMessage(f"Transcription of {name} was cancelled.")
    text, subtitles = _stored(job, "txt"), _stored(job, "srt")
    if text is None or subtitles is None:
        return WebhookMessage(f"⚠️ The transcript of {name} is no longer stored.")
    inline = " ".join(line.strip() for line in text.splitlines() if line.strip())
    if not inline:
        return WebhookMessage(f"No speech was found in {name}.")
    if len(inline) > INLINE_CHARS:
        inline = inline[:INLINE_CHARS].rstrip() + FULL_TEXT_ATTACHED
    language = f", {job.language}" if job.language else ""
    length = clock(job.duration_seconds) if job.duration_seconds else "?"
    head = f"📝 Transcript of {name} ({length}{language}):\n"
    stem = safe_file_name(PurePosixPath(job.source_name).stem) or "transcript"
    files = (
        Attachment(f"{stem}.txt", text.encode("utf-8")),
        Attachment(f"{stem}.srt", subtitles.encode("utf-8")),
    )
    return WebhookMessage(truncate(head + inline, CONTENT_LIMIT), files=files)


def post_follow_up(job_id: str, url: str, timeout: float = 10.0) -> DeliveryResult:
    """Tell the interaction at ``url`` (its follow-up webhook) how job ``job_id`` ended: its
    first message is edited to say so (a courtesy: not retried), then the follow-up is
    posted, one try each of at most ``timeout`` s: the callback's lease covers both, and a
    try that outlived it could post the transcript twice (the callbacks retry instead).
    Never raises; the result says whether posting again may help."""
    job = jobs.get_job(job_id)
    if job is None:
        return DeliveryResult(DeliveryOutcome.REJECTED, reason=f"job {job_id} is gone")
    label = f"job {job_id}: Discord"
    status = WebhookMessage(status_line(job))
    edit_original(url, status, timeout=timeout, max_attempts=1, label=f"{label} edit")
    message = [follow_up_message(job)]
    return post_messages(url, message, timeout=timeout, max_attempts=1, label=f"{label} follow-up")


def _stored(job: TranscriptionJob, form: str) -> str | None:
    """The job's stored transcript in ``form`` (txt, srt), None when it is gone."""
    if not job.output_dir:
        return None
    try:
        with fsspec.open(
            f"{job.output_dir.rstrip('/')}/transcript.{form}", "r", encoding="utf-8"
        ) as f:
            content: str = f.read()
    except FileNotFoundError:
        return None
    return content
