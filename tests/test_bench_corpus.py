"""The benchmarks' varied speech script (bench/corpus.py): long, reproducible, no phrase
frequent enough to decide an error rate by itself."""

from __future__ import annotations

from collections import Counter

import pytest

from bench.corpus import ENDINGS, varied_script
from bench.speech import clip, script


def test_the_varied_script_is_reproducible_and_as_long_as_asked():
    text = varied_script(10)
    assert text == varied_script(10) != varied_script(10, seed=12)
    assert 1700 <= len(text.split()) <= 1760  # espeak-ng's ~172 words a minute


def test_no_phrase_of_the_varied_script_recurs_like_the_first_scripts():
    def busiest_ending(text: str) -> float:
        sentences = [s.strip() for s in text.split(".") if s.strip()]
        counts = Counter(next(e for e in ENDINGS if s.endswith(e)) for s in sentences)
        return max(counts.values()) / len(sentences)

    assert busiest_ending(varied_script(30)) < 0.04
    assert busiest_ending(script(30)) > 0.07  # why the varied one exists (bench/corpus.py)


def test_an_unknown_corpus_is_refused_by_name():
    with pytest.raises(ValueError, match="unknown corpus 'poems': one of phrases, varied"):
        clip(10, "poems")
