"""``python -m cli batch ...``: the video catalogue and its batches.

python -m cli batch import DIR_OR_LIST    add videos to the catalogue
python -m cli batch run [--workers N]     run a batch and wait for it
python -m cli batch work BATCH_ID         one more worker for a running batch
python -m cli batch status [BATCH_ID]     progress as JSON
python -m cli batch force VIDEO_ID ...    process finished videos again
python -m cli batch cancel BATCH_ID       workers stop after their current video
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from typing import Annotated

import typer

from deployments.serve import served_flows
from flows.batch_worker import reprocess_worker
from flows.catalogue import describe, read_sources
from flows.reprocess import BatchOutcome, reprocess_videos
from flows.runtime import prefect_api
from relay_settings import get_settings
from store import batches, videos
from store.batches import batch_progress
from store.models import BatchStatus

app = typer.Typer(
    help="The video catalogue and its batches.", no_args_is_help=True, rich_markup_mode=None
)


@contextmanager
def _bad_input() -> Iterator[None]:
    """Bad input (an unknown id, an unreadable list) is one ``error:`` line and exit 1."""
    try:
        yield
    except (ValueError, LookupError) as err:
        print(f"error: {err}", file=sys.stderr)
        raise typer.Exit(1) from None


def _command(function: Callable[..., None]) -> Callable[..., None]:
    return app.command(function.__name__.removesuffix("_"))(function)


@_command
def import_(
    target: Annotated[str, typer.Argument(help="a folder, a .csv or a .json list of videos")],
) -> None:
    """Add videos to the catalogue (a video already there is not added twice)."""
    with _bad_input():
        sources = read_sources(target)
        added, known = videos.import_videos(describe(source) for source in sources)
    print(f"{added} video(s) added, {known} already in the catalogue ({len(sources)} listed)")


@_command
def run(
    workers: Annotated[
        int | None, typer.Option(help="worker flow runs (default RELAY_BATCH_WORKERS)")
    ] = None,
    force: Annotated[list[int] | None, typer.Option(help="a video id to redo (repeat)")] = None,
) -> None:
    """Run a batch over the waiting videos and wait for it; prints its outcome as JSON."""
    embedded = not os.environ.get("PREFECT_API_URL")
    with prefect_api(), ExitStack() as stack:
        if embedded:  # workers need a process to run in: serve the deployments locally
            stack.enter_context(served_flows(get_settings().batch.worker_deployment))
        state = reprocess_videos(workers=workers, force_ids=force or [], return_state=True)
    outcome = state.result(raise_on_failure=False)
    if isinstance(outcome, BatchOutcome):
        print(json.dumps(outcome.__dict__))
    if not state.is_completed():
        print(f"error: {state.message}", file=sys.stderr)
        raise typer.Exit(1)


@_command
def work(batch_id: str) -> None:
    """Run one more worker for a running batch, in this process."""
    with _bad_input():
        if batches.get_batch(batch_id) is None:
            raise LookupError(f"no batch {batch_id}")
    with prefect_api():
        summary = reprocess_worker(batch_id)
    print(json.dumps(summary.__dict__))


@_command
def status(batch_id: Annotated[str | None, typer.Argument()] = None) -> None:
    """Progress of a batch as JSON (default: the newest)."""
    with _bad_input():
        found = batch_id or batches.newest_batch_id()
        progress = batch_progress(found) if found else None
        if progress is None:
            raise LookupError(f"no batch {batch_id}" if batch_id else "no batch yet")
    print(json.dumps(progress.as_dict(), default=str, indent=2))


@_command
def force(video_ids: list[int]) -> None:
    """Make finished videos pending again; the next batch processes them."""
    count = videos.force(video_ids)
    print(f"{count} video(s) pending again; the next batch processes them")


@_command
def cancel(batch_id: str) -> None:
    """Stop a batch: its workers finish their current video."""
    with _bad_input():
        if not batches.finish_batch(batch_id, BatchStatus.CANCELLED):
            raise LookupError(f"no running batch {batch_id}")
    print(f"batch {batch_id} cancelled; its workers stop after their current video")
