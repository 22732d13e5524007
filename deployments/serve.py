"""Embedded mode: serve the flows from this process so API submissions run on one laptop.

``python -m deployments.serve`` registers the deployments under the same names the work
pools use (``transcribe/asr-cpu``) and runs whatever is submitted to them.
"""

from __future__ import annotations

from prefect import serve

from flows.transcribe import transcribe


def main() -> None:
    """Serve the transcription deployment until interrupted."""
    serve(transcribe.to_deployment(name="asr-cpu", description="Embedded-mode transcription"))


if __name__ == "__main__":
    main()
