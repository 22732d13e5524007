"""A ``/transcribe`` job's progress on Discord: while its chunks are transcribed, the
interaction's first message is edited with the job's progress as the store has it, at most
every ``RELAY_DISCORD_PROGRESS_SECONDS`` and only when what it says has changed.

Progress is a courtesy: an edit Discord does not take (a 429, an expired token) is skipped,
and nothing here ever fails or slows the job. A job that did not come from Discord costs
one read of its callback row.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator
from contextlib import contextmanager

from relay_settings import get_settings
from store import callbacks, jobs
from store.models import CallbackKind, CallbackStatus, CallbackSubject
from tasks.discord_webhook import WebhookMessage, edit_original
from tasks.interaction_reply import status_line

log = logging.getLogger("relay.discord")
EDIT_TIMEOUT_SECONDS = 5.0  # one edit's longest wait for Discord: the job never waits longer


@contextmanager
def progress_edits(job_id: str) -> Iterator[None]:
    """While the block runs, edit the Discord message of job ``job_id`` (if it came from
    ``/transcribe``) with its progress; the last edit has ended when the block exits."""
    url = _follow_up_url(job_id)
    if url is None:
        yield
        return
    stop = threading.Event()
    every = get_settings().discord.progress_seconds
    thread = threading.Thread(
        target=_edit_until, args=(job_id, url, every, stop), name=f"progress-{job_id}", daemon=True
    )
    thread.start()
    try:
        yield
    finally:
        stop.set()
        # An edit under way ends within its timeout: none may land after the final one.
        thread.join(timeout=EDIT_TIMEOUT_SECONDS + 1.0)


def _follow_up_url(job_id: str) -> str | None:
    """The interaction's webhook URL while the job's Discord follow-up waits; else None."""
    try:
        callback = callbacks.get(CallbackSubject.TRANSCRIPTION, job_id)
        if callback is None or callback.kind != CallbackKind.DISCORD:
            return None
        if callback.status != CallbackStatus.WAITING:
            return None
        return callbacks.url_of(callback)
    except Exception as err:  # progress is a courtesy: the job goes on
        log.warning("job %s: no progress edits on Discord: %s", job_id, type(err).__name__)
        return None


def _edit_until(job_id: str, url: str, every: float, stop: threading.Event) -> None:
    """Every ``every`` seconds until ``stop``: edit the message if the job's line changed."""
    shown = None
    while not stop.wait(every):
        try:
            job = jobs.get_job(job_id)
            if job is None or job.status in jobs.FINAL_STATES:
                return  # its follow-up says the rest
            line = status_line(job)
            if line == shown:
                continue
            result = edit_original(
                url,
                WebhookMessage(line),
                timeout=EDIT_TIMEOUT_SECONDS,
                max_attempts=1,
                label=f"job {job_id}: progress",
            )
            if result.delivered:
                shown = line
        except Exception:
            log.exception("job %s: progress edit failed; trying again later", job_id)
