"""The server under load: concurrent clients, a third of them sending garbage, on 127.0.0.1 only.

60 requests from a pool of 8 client threads (seeded order) hit a tiny base + one LoRA adapter:
every valid request (chat, completions, streamed chat; base and adapter) must answer 200 with
exactly the greedy text the same request gets alone, every garbage request (malformed JSON,
wrong types, unknown models, over-limit tokens, a 3 MB body, a 1 MB stop string, absurd seeds,
400 prompts, a lone surrogate) a 4xx in OpenAI's error shape (never a 5xx), no request may take
longer than 20 s, no concurrency slot may leak, and the process's resident memory may not grow
by more than 300 MB. It stops by itself in well under a minute.
"""

from __future__ import annotations

import json
import random
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest

from instructune.adapters.merge import random_lora
from instructune.serving.app import create_app
from instructune.serving.hotswap import AdapterSet
from instructune.serving.protocol import Limits
from instructune.testing import serve_in_background

PROMPT = "Classify the sentiment of this review"
REQUESTS, CLIENTS, RSS_GROWTH_MB, LATENCY_BOUND_S = 60, 8, 300, 20


def rss_mb() -> float:
    """Resident memory of this process (server and clients both live here), from /proc/self/status."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS in /proc/self/status")


# (kind, method, path, body): valid kinds name the reference they must equal; chat and completions ask for
# different max_tokens so the batcher never pads one prompt against the other.
def chat_body(model: str, stream: bool = False) -> dict:
    return {"model": model, "messages": [{"role": "user", "content": PROMPT}], "max_tokens": 8, "temperature": 0,
            "stream": stream}


VALID = [
    ("chat:tiny", "POST", "/v1/chat/completions", chat_body("tiny")),
    ("chat:one", "POST", "/v1/chat/completions", chat_body("one")),
    ("text:tiny", "POST", "/v1/completions", {"model": "tiny", "prompt": PROMPT, "max_tokens": 6, "temperature": 0}),
    ("text:one", "POST", "/v1/completions", {"model": "one", "prompt": PROMPT, "max_tokens": 6, "temperature": 0}),
    ("stream:one", "POST", "/v1/chat/completions", chat_body("one", stream=True)),
]
GARBAGE = [
    ("bad", "POST", "/v1/chat/completions", b'{"model": "tiny", "messages": ['),
    ("bad", "POST", "/v1/chat/completions", b"\xff\xfe not json at all \x00"),
    ("bad", "POST", "/v1/chat/completions", {**chat_body("tiny"), "model": "nobody"}),
    ("bad", "POST", "/v1/completions", {"model": "../../etc/passwd", "prompt": "x"}),
    ("bad", "POST", "/v1/chat/completions", {**chat_body("tiny"), "max_tokens": 10**9}),
    ("bad", "POST", "/v1/chat/completions", {**chat_body("tiny"), "max_tokens": -1}),
    ("bad", "POST", "/v1/chat/completions", {**chat_body("tiny"), "max_tokens": "ten"}),
    ("bad", "POST", "/v1/chat/completions", {**chat_body("tiny"), "temperature": "hot"}),
    ("bad", "POST", "/v1/chat/completions", {**chat_body("tiny"), "messages": "hello"}),
    ("bad", "POST", "/v1/chat/completions", {**chat_body("tiny"), "messages": []}),
    ("bad", "POST", "/v1/chat/completions", {**chat_body("tiny"), "model": 5}),
    ("bad", "POST", "/v1/chat/completions", {**chat_body("tiny"), "n": 3}),
    ("bad", "POST", "/v1/chat/completions", {**chat_body("tiny"), "stop": [str(i) for i in range(10)]}),
    ("bad", "POST", "/v1/completions", {"model": "tiny", "prompt": {"a": 1}}),
    ("bad", "POST", "/v1/completions", {"model": "tiny", "prompt": []}),
    ("bad", "POST", "/v1/completions", {"model": "tiny", "prompt": "word " * 20_000}),
    ("bad", "POST", "/v1/chat/completions", [1, 2, 3]),
    ("bad", "POST", "/v1/chat/completions", b'{"model": "tiny", "messages": [{"role": "user", "content": "'
     + b"x" * (3 << 20) + b'"}]}'),  # a 3 MB body: over the 1 MiB limit
    ("bad", "POST", "/v1/chat/completions", {**chat_body("tiny"), "stop": ["x" * 1_000_000]}),
    ("bad", "POST", "/v1/chat/completions", {**chat_body("tiny"), "seed": 2**70}),
    ("bad", "POST", "/v1/chat/completions", {**chat_body("tiny"), "seed": -5}),
    ("bad", "POST", "/v1/completions", {"model": "tiny", "prompt": ["The movie was"] * 400, "max_tokens": 2}),
    ("bad", "POST", "/v1/chat/completions", {**chat_body("tiny"), "messages": [{"role": "user",
                                                                                "content": "hi \ud800"}]}),
    ("bad", "GET", "/v1/chat/completions", None),
    ("bad", "GET", "/v1/no-such-route", None),
]


LATENCIES: list[float] = []


def call(client: httpx.Client, method: str, path: str, body: Any) -> tuple[int, Any]:
    """(status, JSON body or the joined text of a stream); the latency of each call is kept in LATENCIES."""
    if isinstance(body, (dict, list)):
        body = json.dumps(body).encode()
    start = time.monotonic()
    try:
        return _call(client, method, path, body)
    finally:
        LATENCIES.append(time.monotonic() - start)


def _call(client: httpx.Client, method: str, path: str, body: Any) -> tuple[int, Any]:
    response = client.request(method, path, content=body, headers={"Content-Type": "application/json"})
    if response.headers.get("content-type", "").startswith("text/event-stream"):
        text = ""
        for event in response.text.split("\n\n"):
            if event.startswith("data: {"):
                chunk = json.loads(event[6:])
                assert "error" not in chunk, chunk
                text += "".join(c["delta"].get("content") or "" for c in chunk["choices"])
        assert response.text.rstrip().endswith("data: [DONE]")
        return response.status_code, text
    return response.status_code, response.json()


def answer(kind: str, status: int, body: Any) -> str:
    assert status == 200, (kind, status, body)
    if kind.startswith("stream"):
        return body
    choice = body["choices"][0]
    return choice["message"]["content"] if kind.startswith("chat") else choice["text"]


@pytest.mark.slow
def test_server_under_concurrent_load_with_garbage(tiny_model_dir: Path, tmp_path: Path) -> None:
    lora = random_lora(tiny_model_dir, tmp_path / "one", seed=1, targets=("o_proj", "down_proj"))
    aset = AdapterSet(str(tiny_model_dir), {"one": lora}, served_name="tiny")
    app = create_app(aset, Limits(max_tokens=32, max_prompt_tokens=256, max_concurrent=2 * CLIENTS,
                                  batch_window_ms=20, max_batch=8))
    rng = random.Random(7)
    plan = [rng.choice(VALID) if i % 3 else rng.choice(GARBAGE) for i in range(REQUESTS)]
    with serve_in_background(app) as port, httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=60) as client:
        # alone, one at a time: what each valid request must answer under load (this also warms every path)
        want = {kind: answer(kind, *call(client, method, path, body)) for kind, method, path, body in VALID}
        assert all(want.values()) and want["chat:tiny"] != want["chat:one"]
        assert want["stream:one"] == want["chat:one"]
        before, start = rss_mb(), time.monotonic()
        LATENCIES.clear()
        with ThreadPoolExecutor(CLIENTS) as pool:
            results = list(pool.map(lambda r: (r[0], *call(client, r[1], r[2], r[3])), plan))
        elapsed, grown, slowest = time.monotonic() - start, rss_mb() - before, max(LATENCIES)
        health = client.get("/health").json()
        after = answer("chat:one", *call(client, *VALID[1][1:]))

    valid = [(kind, status, body) for kind, status, body in results if kind != "bad"]
    garbage = [(status, body) for kind, status, body in results if kind == "bad"]
    assert len(valid) == 40 and len(garbage) == 20
    assert [answer(kind, status, body) for kind, status, body in valid] == [want[kind] for kind, _, _ in valid]
    assert all(400 <= status < 500 for status, _ in garbage), sorted({s for s, _ in garbage})
    assert all(set(body["error"]) == {"message", "type", "param", "code"} and body["error"]["message"]
               for _, body in garbage)
    assert health["in_flight"] == 0 and app.state.ctx.gate.count == 0  # every slot given back
    assert after == want["chat:one"]  # the server still answers the same after the storm
    assert grown < RSS_GROWTH_MB, f"RSS grew {grown:.0f} MB"
    assert slowest < LATENCY_BOUND_S, f"a request took {slowest:.1f} s"
    assert elapsed < 60
