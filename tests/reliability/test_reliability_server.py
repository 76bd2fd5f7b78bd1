"""The server against one bad request: a huge body, a huge stop string, an absurd seed, a flood of prompts,
a lone surrogate, a JSON string body, a dead batcher. Each is refused in OpenAI's error shape, fast, and the
requests beside it are answered as if alone. On 127.0.0.1 only."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from instructune.adapters.merge import random_lora
from instructune.cli import main
from instructune.serving.app import create_app
from instructune.serving.generation import Gate, StopScanner, overlap
from instructune.serving.hotswap import AdapterSet
from instructune.serving.protocol import APIError, Limits
from instructune.testing import serve_in_background

PROMPT = "Classify the sentiment of this review"
BODY = {"model": "tiny", "messages": [{"role": "user", "content": PROMPT}], "max_tokens": 6, "temperature": 0}


@pytest.fixture(scope="module")
def server(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, object]]:
    lora = random_lora(tiny_model_dir, tmp_path_factory.mktemp("lora") / "one", seed=1)
    aset = AdapterSet(str(tiny_model_dir), {"one": lora}, served_name="tiny")
    app = create_app(aset, Limits(max_tokens=32, max_prompt_tokens=64, max_concurrent=4, max_body_bytes=64 * 1024))
    with serve_in_background(app) as port:
        yield f"http://127.0.0.1:{port}", app


def post(url: str, path: str = "/v1/chat/completions", **kw: object) -> httpx.Response:
    return httpx.post(f"{url}{path}", timeout=60, **kw)


def alone(url: str) -> str:
    return post(url, json=BODY).json()["choices"][0]["message"]["content"]


def test_a_huge_body_is_refused_before_it_is_read_and_health_answers(server: tuple[str, object]) -> None:
    url, _ = server
    huge = b'{"model": "tiny", "messages": [{"role": "user", "content": "' + b"x" * (50 << 20) + b'"}]}'
    result: dict[str, object] = {}

    def send() -> None:
        start = time.monotonic()
        try:
            result["status"] = post(url, content=huge, headers={"content-type": "application/json"}).status_code
        except httpx.HTTPError as e:  # the server may close the connection once it has said 413
            result["status"] = type(e).__name__
        result["seconds"] = time.monotonic() - start

    sender = threading.Thread(target=send)
    sender.start()
    health = httpx.get(f"{url}/health", timeout=10)  # answered while the big request is on the wire
    sender.join(timeout=60)
    assert health.status_code == 200
    assert result["status"] in (413, "RemoteProtocolError", "WriteError", "ReadError")
    assert result["seconds"] < 30
    chunked = post(url, content=iter([b'{"model": "tiny", "messages": [{"content": "', b"x" * (80 << 10), b'"}]}']),
                   headers={"content-type": "application/json"})  # no Content-Length: counted as it arrives
    assert chunked.status_code == 413 and chunked.json()["error"]["code"] == "body_too_large"
    assert "64 KiB" in chunked.json()["error"]["message"] or "65,536 bytes" in chunked.json()["error"]["message"]


def test_long_prompts_are_refused_by_their_length_before_tokenizing(server: tuple[str, object]) -> None:
    url, _ = server
    r = post(url, json={**BODY, "messages": [{"role": "user", "content": "word " * 2000}]})
    assert r.status_code == 400 and r.json()["error"]["code"] == "context_length_exceeded"
    assert "characters" in r.json()["error"]["message"]


def test_stop_strings_are_bounded_and_scanned_in_linear_time(server: tuple[str, object]) -> None:
    url, _ = server
    r = post(url, json={**BODY, "stop": ["x" * 5000]})
    assert r.status_code == 400 and r.json()["error"]["code"] == "stop_too_long"
    assert "at most 1000" in r.json()["error"]["message"]
    assert post(url, json={**BODY, "stop": ["a", "b", "c", "d", "e"]}).status_code == 400
    # the scanner holds back exactly the longest end of the text that starts a stop string
    assert overlap("hello wor", "world") == 3 and overlap("abcab", "abcabd") == 5 and overlap("xyz", "abc") == 0
    scan = StopScanner(("x" * 999 + "y",))
    pieces = [scan.feed("x" * 50) for _ in range(40)]  # 2,000 x: never the stop, always a possible start
    assert "".join(pieces) + scan.flush() == "x" * 2000 and not scan.hit


def test_an_absurd_seed_is_refused_and_breaks_nobody_elses_request(server: tuple[str, object]) -> None:
    url, _ = server
    want = alone(url)
    replies: dict[str, httpx.Response] = {}

    def ask(name: str, body: dict) -> None:
        replies[name] = post(url, json=body)

    threads = [threading.Thread(target=ask, args=(f"ok{i}", BODY)) for i in range(3)]
    threads.append(threading.Thread(target=ask, args=("bad", {**BODY, "seed": 2**70})))
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert replies["bad"].status_code == 400 and "seed" in replies["bad"].json()["error"]["message"]
    assert [replies[f"ok{i}"].json()["choices"][0]["message"]["content"] for i in range(3)] == [want] * 3


def test_prompts_count_against_the_concurrency_cap(server: tuple[str, object]) -> None:
    url, app = server
    many = post(url, "/v1/completions", json={"model": "tiny", "prompt": [PROMPT] * 400, "max_tokens": 2})
    assert many.status_code == 400 and many.json()["error"]["code"] == "too_many_prompts"
    assert "at most 4 per request" in many.json()["error"]["message"]
    gate = Gate(4)
    release = gate.enter(3)  # three prompts of one request
    with pytest.raises(APIError) as err:
        gate.enter(2)
    assert err.value.status == 429
    release()
    gate.enter(4)()
    held = app.state.ctx.gate.enter(3)
    try:
        r = post(url, "/v1/completions", json={"model": "tiny", "prompt": [PROMPT] * 2, "max_tokens": 2})
        assert r.status_code == 429
    finally:
        held()


@pytest.mark.parametrize("where", ["model", "content"])
def test_a_lone_surrogate_is_an_openai_400(server: tuple[str, object], where: str) -> None:
    url, _ = server
    raw = ('{"model": "tiny\\ud800", "messages": [{"role": "user", "content": "hi"}]}' if where == "model" else
           '{"model": "tiny", "messages": [{"role": "user", "content": "hi \\ud800"}]}')
    r = post(url, content=raw.encode(), headers={"content-type": "application/json"})
    assert r.status_code == 400 and set(r.json()["error"]) == {"message", "type", "param", "code"}
    assert "lone surrogate" in r.json()["error"]["message"]


def test_a_json_string_body_gets_a_clear_message(server: tuple[str, object]) -> None:
    url, _ = server
    for body, kind in (('"hello"', "a JSON string"), ("[1, 2]", "a JSON array"), ("42", "a JSON number")):
        r = post(url, content=body.encode(), headers={"content-type": "application/json"})
        assert r.status_code == 400 and f"the request body is {kind}; send a JSON object" in r.json()["error"]["message"]


def test_health_reports_a_dead_batcher_and_the_next_request_restarts_it(server: tuple[str, object]) -> None:
    url, app = server
    batcher = app.state.ctx.batcher
    alone(url)  # the batcher thread runs
    batcher.stop()
    batcher.thread = threading.Thread(target=lambda: None)  # a thread that has died
    batcher.thread.start()
    batcher.thread.join()
    r = httpx.get(f"{url}/health", timeout=10)
    assert r.status_code == 503 and r.json()["status"] == "error"
    assert alone(url)  # a request starts a new one
    assert httpx.get(f"{url}/health", timeout=10).status_code == 200


@pytest.mark.parametrize(("flag", "message"), [("inf", "--batch-window-ms must be a number from 0 to 1000"),
                                               ("nan", "--batch-window-ms must be a number from 0 to 1000"),
                                               ("-1", "--batch-window-ms must be a number from 0 to 1000")])
def test_serve_options_are_checked_before_the_model_loads(flag: str, message: str,
                                                          capsys: pytest.CaptureFixture[str]) -> None:
    start = time.monotonic()
    assert main(["serve", "--model", "/nonexistent", "--batch-window-ms", flag]) == 2
    assert message in capsys.readouterr().err
    assert time.monotonic() - start < 10
