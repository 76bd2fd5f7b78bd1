"""Clients that leave a streamed request while it waits for the model cost no prefill: the server sees each
one go, takes its prompt out of the line and gives its slot back, all while the model is still busy.

Counted, not timed: a forward pre-hook holds the first request inside the model and records every forward
call; a call whose input is longer than one token is a prefill."""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx

from instructune.serving.app import create_app
from instructune.serving.hotswap import AdapterSet
from instructune.serving.protocol import Limits
from instructune.testing import serve_in_background

LEAVERS = 4


def chat_body(stream: bool) -> dict[str, Any]:
    return {"model": "tiny", "messages": [{"role": "user", "content": "Classify the sentiment of this review"}],
            "max_tokens": 8, "temperature": 0, "stream": stream}


def wait_for(check: Any, what: str, limit_s: float = 30) -> None:
    deadline = time.monotonic() + limit_s
    while not check():
        assert time.monotonic() < deadline, f"still waiting for {what}"
        time.sleep(0.02)


def test_streams_whose_clients_leave_in_line_cost_no_prefill(tiny_model_dir: Path) -> None:
    aset = AdapterSet(str(tiny_model_dir), served_name="tiny")
    app = create_app(aset, Limits(max_tokens=16, max_prompt_tokens=64, max_concurrent=8, batch_window_ms=0))
    gate, inside, go = app.state.ctx.gate, threading.Event(), threading.Event()
    lengths: list[int] = []

    def hold_first(module: Any, args: tuple, kwargs: dict) -> None:
        ids = kwargs["input_ids"] if kwargs.get("input_ids") is not None else args[0]
        lengths.append(ids.shape[1])
        if len(lengths) == 1:  # the first request keeps the model (and the line) until the test says go
            inside.set()
            go.wait(timeout=60)

    handle = aset.base_model.register_forward_pre_hook(hold_first, with_kwargs=True)
    try:
        with serve_in_background(app) as port, ThreadPoolExecutor(1) as pool:
            url = f"http://127.0.0.1:{port}/v1/chat/completions"
            first = pool.submit(httpx.post, url, json=chat_body(stream=False), timeout=60)
            assert inside.wait(timeout=60)
            for _ in range(LEAVERS):  # each reads the response's head, then hangs up
                with httpx.Client(timeout=60) as client, client.stream("POST", url, json=chat_body(True)) as r:
                    assert r.status_code == 200
            wait_for(lambda: gate.count == 1, "the server to see every client go")  # only the first is left
            go.set()
            assert first.result(timeout=60).status_code == 200
            after = httpx.post(url, json=chat_body(stream=True), timeout=60)
            assert after.status_code == 200 and after.text.rstrip().endswith("data: [DONE]")
    finally:
        go.set()
        handle.remove()
    assert sum(n > 1 for n in lengths) == 2  # the first request and the one after: none of the leavers
    assert gate.count == 0
