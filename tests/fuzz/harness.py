"""What every fuzz target shares: how it starts atheris, and the seed corpus it begins from.

A target states its contract as `Rejected`, the exception types that are a reasoned
rejection; the harness lets those pass only when their message is not empty (a rejection
must say why) and lets any other exception reach atheris, which reports it as a finding
with the input that caused it.
"""

from __future__ import annotations

import os
import sys
import tempfile
from collections.abc import Callable, Iterable
from pathlib import Path


def check_reason(error: BaseException) -> None:
    """A rejection with no words in it is a finding too: the producer cannot act on it."""
    if not str(error).strip():
        raise AssertionError(f"{type(error).__name__} rejected an input without a reason")


def fuzz(test_one_input: Callable[[bytes], None], seeds: Iterable[bytes] = ()) -> None:
    """Run atheris on `test_one_input` with libFuzzer's command-line flags from argv.

    Without a corpus directory on the command line, the seeds are written to a fresh one,
    so mutation starts from real inputs (a plant YAML, a Sparkplug birth) rather than from
    empty bytes.
    """
    import atheris  # imported here: the unit tests import targets without fuzzing them

    # Polars panics on some corrupt Arrow bodies (the decoder reports them as rejections);
    # a Rust backtrace for each would bury libFuzzer's own output.
    os.environ.setdefault("RUST_BACKTRACE", "0")
    argv = list(sys.argv)
    has_corpus = any(not arg.startswith("-") for arg in argv[1:])
    with tempfile.TemporaryDirectory(prefix="linepulse-fuzz-") as corpus:
        if not has_corpus:
            for number, seed in enumerate(seeds):
                Path(corpus, f"seed-{number}").write_bytes(seed)
            argv.append(corpus)
        atheris.Setup(argv, test_one_input)
        atheris.Fuzz()
