"""Cancellation in the line to the model: a request cancelled while it waits never reaches the model, and
no cleanup path waits for its own thread.

Counted, not timed: a forward pre-hook on the tiny model records every forward call, and a call whose
input is longer than one token is a prefill."""

from __future__ import annotations

import gc
import sys
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from instructune.data.prompt import prompt_text
from instructune.serving.generation import Batcher, Cancel
from instructune.serving.hotswap import AdapterSet
from instructune.serving.protocol import Params

PROMPT = "Classify the sentiment of this review"
GREEDY = Params(4, 0.0, 1.0, None)


@pytest.fixture(scope="module")
def aset(tiny_model_dir: Path) -> AdapterSet:
    return AdapterSet(str(tiny_model_dir), served_name="tiny")


@pytest.fixture
def text(aset: AdapterSet) -> str:
    return prompt_text(aset.tokenizer, PROMPT)


def input_ids(args: tuple, kwargs: dict) -> Any:
    return kwargs["input_ids"] if kwargs.get("input_ids") is not None else args[0]


@contextmanager
def forwards(model: Any) -> Iterator[list[tuple[int, int]]]:
    """The (batch, length) of every forward call of `model` within the block."""
    shapes: list[tuple[int, int]] = []
    handle = model.register_forward_pre_hook(
        lambda module, args, kwargs: shapes.append(tuple(input_ids(args, kwargs).shape)), with_kwargs=True)
    try:
        yield shapes
    finally:
        handle.remove()


def prefilled(shapes: list[tuple[int, int]]) -> int:
    """How many prompts went through a prefill."""
    return sum(batch for batch, length in shapes if length > 1)


def test_submitted_requests_cancelled_in_line_never_reach_the_model(aset: AdapterSet, text: str) -> None:
    batcher = Batcher(aset, window_s=0, max_batch=8)  # no window: each request is its own batch
    with forwards(aset.base_model) as shapes:
        with aset.lock:  # the model is busy: the first request waits inside it, the others in line
            first = batcher.submit(text, None, GREEDY)
            queued = [batcher.submit(text, None, GREEDY) for _ in range(3)]
            assert all(future.cancel() for future in queued)  # as asyncio.wrap_future does for a gone client
        last = batcher.submit(text, None, GREEDY).result(timeout=60)  # behind them in line
        assert first.result(timeout=60) == last
    batcher.stop()
    assert prefilled(shapes) == 2 and list(batcher.batches) == [1, 1]


def test_streams_cancelled_in_line_never_reach_the_model(aset: AdapterSet, text: str) -> None:
    batcher = Batcher(aset, window_s=0, max_batch=8)
    with forwards(aset.base_model) as shapes:
        with aset.lock:
            first = batcher.submit(text, None, GREEDY)
            cancels = [Cancel() for _ in range(3)]
            streams = [batcher.stream(text, None, GREEDY, cancel) for cancel in cancels]  # in line from here
            for cancel in cancels:
                cancel.set()
            assert [list(events) for events in streams] == [[], [], []]  # gone without a word
            late = Cancel()
            late.set()
            assert list(batcher.stream(text, None, GREEDY, late)) == []  # cancelled before it was queued
        pieces = list(batcher.stream(text, None, GREEDY))
    batcher.stop()
    assert "".join(delta for delta, _, _ in pieces) == first.result(timeout=60).text
    assert pieces[-1][1:] == ("length", 4)
    assert prefilled(shapes) == 2


class Lockstep:
    """A forward pre-hook that holds each decode step until the test lets it pass (prefills go through).
    Asked to, the step after that first runs the garbage collector, in the generating thread."""

    def __init__(self) -> None:
        self.cond, self.steps, self.allowed = threading.Condition(), 0, 0
        self.collect, self.collected_in = False, []

    def __call__(self, module: Any, args: tuple, kwargs: dict) -> None:
        if input_ids(args, kwargs).shape[1] > 1:
            return
        with self.cond:
            self.steps += 1
            self.cond.notify_all()
            assert self.cond.wait_for(lambda: self.steps <= self.allowed, timeout=60)
            collect, self.collect = self.collect, False
        if collect:
            self.collected_in.append(threading.current_thread().name)
            gc.collect()

    def step_until(self, done: Callable[[], bool]) -> None:
        """Let steps pass one at a time until `done()` (whoever makes it true notifies `cond`)."""
        with self.cond:
            while not done():
                assert self.cond.wait_for(lambda: done() or self.steps > self.allowed, timeout=60)
                if not done():
                    self.allowed += 1
                    self.cond.notify_all()

    def release(self, collect: bool) -> None:
        with self.cond:
            self.collect, self.allowed = collect, 10**9
            self.cond.notify_all()


def test_a_stream_collected_in_its_generating_thread_does_not_join_itself(aset: AdapterSet, text: str,
                                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    """An abandoned stream in a reference cycle is closed by whichever thread runs the garbage collector,
    often its own generating thread (it allocates the most): its cleanup must stop generation without
    joining that thread ('RuntimeError: cannot join current thread' before)."""
    unraisable: list[BaseException | None] = []
    monkeypatch.setattr(sys, "unraisablehook", lambda u: unraisable.append(u.exc_value))
    batcher, step = Batcher(aset, window_s=0, max_batch=8), Lockstep()
    handle = aset.base_model.register_forward_pre_hook(step, with_kwargs=True)
    try:
        box: list[Any] = [batcher.stream(text, None, Params(32, 0.0, 1.0, None))]
        got: list[Any] = []

        def read() -> None:  # a client that read one piece and left
            got.append(next(box[0]))
            with step.cond:
                step.cond.notify_all()

        reader = threading.Thread(target=read)
        reader.start()
        step.step_until(lambda: bool(got))
        reader.join(timeout=60)
        cycle = [box.pop()]
        cycle.append(cycle)  # only the garbage collector frees the stream now
        del cycle
        step.release(collect=True)
        batcher.submit(text, None, GREEDY).result(timeout=60)  # in line behind the stream: it has ended
    finally:
        step.release(collect=False)
        handle.remove()
        batcher.stop()
    assert step.collected_in == ["instructune-stream"]
    assert unraisable == []
    assert step.steps < 31  # the stream stopped early (31 decode steps alone had it run to the end)


def test_the_batcher_stopped_from_its_own_thread_does_not_join_itself(aset: AdapterSet, text: str) -> None:
    batcher = Batcher(aset, window_s=0, max_batch=8)
    handle = aset.base_model.register_forward_pre_hook(lambda module, args: batcher.stop())  # from its own work
    try:
        choice = batcher.submit(text, None, GREEDY).result(timeout=60)
    finally:
        handle.remove()
    assert choice.completion_tokens == 4 and batcher.thread is None
