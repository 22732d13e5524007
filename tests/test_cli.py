"""`python -m cli transcribe` as a person runs it: embedded Prefect, exit codes, no traceback."""

from __future__ import annotations

import os
import subprocess
import sys

from tasks.wer import word_error_rate
from tests.audio import ROOT


def cli(*args: str, home) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_API")}
    env["PREFECT_HOME"] = str(home)  # the temporary server's database, not the user's
    return subprocess.run(
        [sys.executable, "-m", "cli", "transcribe", *args],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip


def test_cli_transcribes_and_copies_the_files(tmp_path):
    done = cli(str(ROOT / "samples" / "meeting.ogg"), "--out", str(tmp_path / "out"), home=tmp_path)
    assert done.returncode == 0, done.stderr[-2000:]
    reference = (ROOT / "samples" / "meeting.txt").read_text()
    written = (tmp_path / "out" / "meeting.txt").read_text()
    assert word_error_rate(reference, written) <= 0.15
    for fmt in ("txt", "srt", "vtt", "json"):
        assert (tmp_path / "out" / f"meeting.{fmt}").stat().st_size > 0
        assert str(tmp_path / "out" / f"meeting.{fmt}") in done.stdout
    assert "weekly planning meeting" in done.stdout.lower()
    # Only the one temporary server was started: Dask workers reported to it.
    assert done.stderr.count("Starting temporary server") == 1


def test_cli_bad_input_is_one_line_and_a_non_zero_exit(tmp_path):
    (tmp_path / "empty.mp3").touch()
    done = cli(str(tmp_path / "empty.mp3"), home=tmp_path)
    assert done.returncode == 1
    assert done.stderr.strip().splitlines()[-1] == "error: empty.mp3: file is empty (0 bytes)"
    assert "Traceback" not in done.stderr + done.stdout
