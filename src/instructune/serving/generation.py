"""Generation behind the API: stop strings, the line to the model, streaming, cancellation, the concurrency gate.

Every request waits in one line (the `Batcher`), first come, first served. Non-streamed requests
arriving within a few ms with the same adapter and sampling settings become one left-padded
`generate` call; a streamed one runs `model.generate` in a thread feeding a `TextIteratorStreamer`
and keeps the model until it ends. A request cancelled while it waits (its client gone) leaves the
line without touching the model.
"""

from __future__ import annotations

import queue
import random
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import CancelledError, Future
from dataclasses import dataclass, field

from instructune.serving.hotswap import AdapterSet, TokenStream
from instructune.serving.protocol import APIError, Choice, Params


class StopScanner:
    """Cuts a growing text at the first stop string, holding back a tail that may start one.

    Linear in the text and the stop strings: each piece is searched once, and the held-back tail is
    the longest end of the text that is a start of a stop string, found with the KMP prefix function."""

    def __init__(self, stops: tuple[str, ...]) -> None:
        self.stops, self.buf, self.hit = [s for s in stops if s], "", False

    def feed(self, piece: str) -> str:
        self.buf += piece
        found = [i for i in (self.buf.find(s) for s in self.stops) if i >= 0]
        if found:
            out, self.buf, self.hit = self.buf[:min(found)], "", True
            return out
        keep = max((overlap(self.buf[-(len(s) - 1):], s) for s in self.stops if len(s) > 1), default=0)
        out, self.buf = self.buf[:len(self.buf) - keep], self.buf[len(self.buf) - keep:]
        return out

    def flush(self) -> str:
        out, self.buf = self.buf, ""
        return out


def overlap(text: str, stop: str) -> int:
    """Length of the longest end of `text` that is a start of `stop` (shorter than `stop` itself)."""
    joined = stop + "\0" + text
    prefix = [0] * len(joined)
    for i in range(1, len(joined)):
        k = prefix[i - 1]
        while k and joined[i] != joined[k]:
            k = prefix[k - 1]
        prefix[i] = k + (joined[i] == joined[k])
    return min(prefix[-1], len(stop) - 1) if text else 0


def finish(aset: AdapterSet, raw: str, params: Params) -> Choice:
    """A whole completion cut at its stop string; 'length' when it used up max_tokens."""
    scan = StopScanner(params.stop)
    text = scan.feed(raw)
    text += "" if scan.hit else scan.flush()
    # generate returns text: re-encoded, capped (broken UTF-8 pieces re-encode to more tokens than were made)
    n = min(len(aset.tokenizer(raw, add_special_tokens=False)["input_ids"]), params.max_tokens)
    return Choice(text, "stop" if scan.hit or n < params.max_tokens else "length", n)


class Cancel:
    """A request's cancellation (its client has gone), set once from any thread without waiting.

    What it reaches depends on where the request is: waiting in the batcher's line, it leaves the line
    without touching the model; streaming, its generation stops at the next token; not yet queued, it
    never is."""

    def __init__(self) -> None:
        self.lock, self.done, self.hooks = threading.Lock(), False, []

    def set(self) -> None:
        with self.lock:
            self.done, hooks, self.hooks = True, self.hooks, []
        for hook in hooks:
            hook()

    def is_set(self) -> bool:
        return self.done

    def on_set(self, hook: Callable[[], object]) -> None:
        """Call `hook` when this is set (at once if it already is)."""
        with self.lock:
            if not self.done:
                self.hooks.append(hook)
                return
        hook()


@dataclass
class _Job:
    text: str
    adapter: str | None
    params: Params
    streamed: bool = False
    """A stream runs alone and keeps the model until its generation ends; its future gets the TokenStream."""
    future: Future = field(default_factory=Future)


class Batcher:
    """The one line to the model: requests wait here first come, first served.

    Batched requests that arrive within `window_s` and share adapter and sampling become one generate
    call; a stream runs alone. A request whose future is cancelled while it waits is dropped when its
    turn comes, so a client that left never costs a prefill."""

    def __init__(self, aset: AdapterSet, window_s: float, max_batch: int) -> None:
        self.aset, self.window_s, self.max_batch = aset, window_s, max_batch
        self.jobs: queue.Queue[_Job | None] = queue.Queue()
        self.thread: threading.Thread | None = None
        self.lock = threading.Lock()
        self.batches: deque[int] = deque(maxlen=1000)  # sizes of the latest generate calls

    def submit(self, text: str, adapter: str | None, params: Params) -> Future:
        """Queue one prompt; its future gets a Choice. Cancelling the future while the prompt waits (as
        `asyncio.wrap_future` does when the awaiting task is cancelled) takes it out of the line."""
        return self._put(_Job(text, adapter, params)).future

    def stream(self, text: str, adapter: str | None, params: Params,
               cancel: Cancel | None = None) -> Iterator[tuple[str, str | None, int | None]]:
        """Queue one prompt to stream (in line from this call): iterate for (text delta, None, None) as
        tokens arrive, then ("", finish_reason, completion tokens).

        `cancel` ends it: still in line, it leaves untouched and the iterator is empty; generating, it
        stops at the next token. A stop string, or closing the iterator, also stops it at the next token."""
        cancel = cancel or Cancel()
        if cancel.is_set():
            return iter(())
        job = self._put(_Job(text, adapter, params, streamed=True))
        cancel.on_set(job.future.cancel)
        return _follow(job, params, cancel)

    def _put(self, job: _Job) -> _Job:
        with self.lock:
            if self.thread is None or not self.thread.is_alive():
                self.thread = threading.Thread(target=self._loop, name="instructune-batcher", daemon=True)
                self.thread.start()
        self.jobs.put(job)
        return job

    def stop(self) -> None:
        with self.lock:
            thread, self.thread = self.thread, None  # a later submit starts a new one
        if thread is not None:
            self.jobs.put(None)
            if thread is not threading.current_thread():  # stopped from its own work, it ends after this batch
                thread.join(timeout=60)

    def _collect(self) -> list[_Job] | None:
        first = self.jobs.get()
        if first is None:
            return None
        jobs, deadline = [first], time.monotonic() + self.window_s
        while len(jobs) < 4 * self.max_batch and (left := deadline - time.monotonic()) > 0:
            try:
                job = self.jobs.get(timeout=left)
            except queue.Empty:
                break
            if job is None:
                self.jobs.put(None)  # stop after this batch
                break
            jobs.append(job)
        return jobs

    def _loop(self) -> None:
        while (jobs := self._collect()) is not None:
            groups: dict[tuple[object, ...], list[_Job]] = {}
            for job in jobs:
                key = ("stream", id(job)) if job.streamed else (job.adapter, *job.params.key())
                groups.setdefault(key, []).append(job)
            for group in groups.values():
                most = 1 if group[0].streamed else self.max_batch
                while batch := _claim(group, most):
                    if batch[0].streamed:
                        self._run_stream(batch[0])
                    else:
                        self._run(batch)

    def alive(self) -> bool:
        """False once its thread has died (a new one starts with the next request)."""
        thread = self.thread
        return thread is None or thread.is_alive()

    def _run(self, jobs: list[_Job]) -> None:
        p = jobs[0].params  # every job of a group shares these (their key); greedy ones need no seed at all
        seed = 0 if p.temperature == 0 else p.seed if p.seed is not None else random.randrange(2**31)
        try:
            texts = self.aset.generate([j.text for j in jobs], jobs[0].adapter, max_new_tokens=p.max_tokens,
                                       batch_size=len(jobs), temperature=p.temperature, top_p=p.top_p, seed=seed)
            self.batches.append(len(jobs))
            for job, text in zip(jobs, texts, strict=True):
                job.future.set_result(finish(self.aset, text, job.params))
        except Exception as e:  # answered as a 500 by the request that waits on it
            for job in jobs:
                if not job.future.done():
                    job.future.set_exception(e)

    def _run_stream(self, job: _Job) -> None:
        """Start one stream's generation and keep the line until it ends (its reader may be slow, or gone)."""
        p = job.params
        seed = p.seed if p.seed is not None else random.randrange(2**31)
        try:
            tokens = self.aset.stream(job.text, job.adapter, max_new_tokens=p.max_tokens,
                                      temperature=p.temperature, top_p=p.top_p, seed=seed)
        except Exception as e:  # raised to the reader, which reports it in-band
            job.future.set_exception(e)
            return
        job.future.set_result(tokens)
        tokens.thread.join()


def _claim(group: list[_Job], most: int) -> list[_Job]:
    """Take up to `most` jobs off the front of `group`, dropping those cancelled while they waited; a taken
    job can no longer be cancelled (its client leaving then stops a stream at its next token)."""
    batch: list[_Job] = []
    while group and len(batch) < most:
        job = group.pop(0)
        if job.future.set_running_or_notify_cancel():  # False: cancelled in line, never reaches the model
            batch.append(job)
    return batch


def _follow(job: _Job, params: Params, cancel: Cancel) -> Iterator[tuple[str, str | None, int | None]]:
    """A queued stream's pieces, once its turn comes; nothing if it was cancelled in line."""
    try:
        tokens: TokenStream = job.future.result()
    except CancelledError:
        return
    cancel.on_set(tokens.cancelled.set)
    scan = StopScanner(params.stop)
    try:
        for piece in tokens:
            if out := scan.feed(piece):
                yield out, None, None
            if scan.hit:
                break
        if rest := scan.flush():
            yield rest, None, None
    finally:
        if threading.current_thread() is tokens.thread:
            # closed by the garbage collector inside the generating thread, which cannot wait for itself
            tokens.cancelled.set()
        else:
            tokens.close()  # stop at the next token and wait for it, so the count below is final
    done = scan.hit or tokens.eos or tokens.count < params.max_tokens
    yield "", "stop" if done else "length", tokens.count


class Gate:
    """Counts requests in flight; refuses one over the cap instead of queueing it."""

    def __init__(self, cap: int) -> None:
        self.cap, self.count, self.lock = cap, 0, threading.Lock()

    def enter(self, slots: int = 1) -> Callable[[], None]:
        """Take `slots` (one per prompt) or raise a 429; returns the function that gives them back, once
        however often called."""
        with self.lock:
            if self.count + slots > self.cap:
                raise APIError(429, f"the server is busy: {self.count} of its {self.cap} prompt slots are taken and "
                                    f"this request needs {slots}; retry shortly (or start the server with a higher "
                                    "--max-concurrent).", "rate_limit_error", "rate_limit_exceeded")
            self.count += slots
        held = [True]

        def leave() -> None:
            with self.lock:
                if held:
                    held.pop()
                    self.count -= slots
        return leave
