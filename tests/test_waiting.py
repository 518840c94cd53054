"""tests/waiting.py, the tests' one bounded wait: what it returns, how it gives up."""

from __future__ import annotations

import time

import pytest

from tests.waiting import wait_for


def test_returns_the_first_true_value() -> None:
    answers = iter([None, [], 0, False, ["started"], ["later"]])
    assert wait_for(lambda: next(answers), "a true value") == ["started"]


def test_gives_up_after_the_timeout_naming_what_and_the_last_value() -> None:
    began = time.monotonic()
    with pytest.raises(AssertionError, match=r"gave up after 0.2 s waiting for the gate to queue \(last: \[\]\)"):
        wait_for(list, "the gate to queue", timeout=0.2)
    assert 0.2 <= time.monotonic() - began < 30


def test_an_exception_from_the_probe_ends_the_wait_at_once() -> None:
    def gone() -> bool:
        raise RuntimeError("the process awaited has exited")

    began = time.monotonic()
    with pytest.raises(RuntimeError, match="has exited"):
        wait_for(gone, "a process that is gone", timeout=60)
    assert time.monotonic() - began < 30
