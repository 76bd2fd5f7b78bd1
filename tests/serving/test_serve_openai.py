from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from pathlib import Path

import httpx
import openai
import pytest
import uvicorn
from openai import OpenAI

from instructune.adapters.merge import random_lora
from instructune.data.prompt import prompt_text
from instructune.evaluation.generate import generate
from instructune.models import load_model
from instructune.serving.app import create_app
from instructune.serving.generation import Batcher
from instructune.serving.hotswap import AdapterSet
from instructune.serving.protocol import Limits, Params
from instructune.testing import serve_in_background

TARGETS = ("o_proj", "down_proj")  # on the random tiny model these give readable, distinct greedy outputs
PROMPT = "Classify the sentiment of this review"


@pytest.fixture(scope="module")
def loras(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("loras")
    return {name: random_lora(tiny_model_dir, root / name, seed=seed, targets=TARGETS)
            for name, seed in (("one", 1), ("two", 2))}


@pytest.fixture(scope="module")
def server(tiny_model_dir: Path, loras: dict[str, Path]) -> Iterator[tuple[str, AdapterSet, object]]:
    """The server on a free 127.0.0.1 port for this module; it stops when the module's tests end."""
    aset = AdapterSet(str(tiny_model_dir), loras, served_name="tiny")
    app = create_app(aset, Limits(max_tokens=32, max_prompt_tokens=64, max_concurrent=4, batch_window_ms=50))
    with serve_in_background(app) as port:
        yield f"http://127.0.0.1:{port}", aset, app


@pytest.fixture
def client(server: tuple[str, AdapterSet, object]) -> OpenAI:
    return OpenAI(base_url=f"{server[0]}/v1", api_key="x", timeout=60, max_retries=0)


def direct(tiny_model_dir: Path, adapter: Path | None, prompt: str = PROMPT, n: int = 8) -> str:
    """The completion computed without the server: a fresh model, plain peft, the same generate."""
    from peft import PeftModel

    model, tok = load_model(str(tiny_model_dir))
    if adapter:
        model = PeftModel.from_pretrained(model, str(adapter)).eval()
    return generate(model, tok, [prompt_text(tok, prompt)], max_new_tokens=n)[0]


def chat(client: OpenAI, model: str, **kw: object) -> object:
    kw = {"max_tokens": 8, "temperature": 0, **kw}
    return client.chat.completions.create(model=model, messages=[{"role": "user", "content": PROMPT}], **kw)


def test_list_models_and_health(client: OpenAI, server: tuple[str, AdapterSet, object]) -> None:
    assert [m.id for m in client.models.list()] == ["tiny", "one", "two"]
    assert httpx.get(f"{server[0]}/health", timeout=10).json()["adapters"] == ["one", "two"]


def test_base_and_adapters_in_alternation(client: OpenAI, tiny_model_dir: Path, loras: dict[str, Path]) -> None:
    want = {"tiny": direct(tiny_model_dir, None), "one": direct(tiny_model_dir, loras["one"]),
            "two": direct(tiny_model_dir, loras["two"])}
    assert len(set(want.values())) == 3
    for model in ["one", "two", "tiny", "two", "one", "tiny"]:
        reply = chat(client, model)
        assert reply.choices[0].message.content == want[model]
        assert reply.model == model and reply.choices[0].finish_reason == "length"
        assert reply.usage.completion_tokens == 8


def test_stream_joins_to_the_non_streamed_reply(client: OpenAI) -> None:
    for model in ("one", "tiny"):
        chunks = list(chat(client, model, stream=True, stream_options={"include_usage": True}))
        text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
        assert text == chat(client, model).choices[0].message.content and text
        assert all(c.object == "chat.completion.chunk" and c.id == chunks[0].id for c in chunks)
        assert chunks[0].choices[0].delta.role == "assistant"
        assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "length"
        assert chunks[-1].usage.completion_tokens == 8


def test_completions_stop_and_raw_sse(client: OpenAI, server: tuple[str, AdapterSet, object],
                                      tiny_model_dir: Path, loras: dict[str, Path]) -> None:
    full = direct(tiny_model_dir, loras["two"], n=8)  # ' wit wit wit ...' on this model
    stop = full.split()[1] if len(full.split()) > 1 else full[2:4]
    reply = client.chat.completions.create(model="two", messages=[{"role": "user", "content": PROMPT}],
                                           max_tokens=8, temperature=0, stop=[stop])
    assert reply.choices[0].message.content == full[:full.index(stop)]
    assert reply.choices[0].finish_reason == "stop"

    raw = client.completions.create(model="tiny", prompt=["The movie was", "A dull"], max_tokens=5, temperature=0)
    assert [c.index for c in raw.choices] == [0, 1] and raw.object == "text_completion"

    body = {"model": "one", "prompt": "The movie was", "max_tokens": 5, "temperature": 0, "stream": True}
    with httpx.stream("POST", f"{server[0]}/v1/completions", json=body, timeout=30) as r:
        assert r.headers["content-type"].startswith("text/event-stream")
        events = [line for line in r.iter_lines() if line]
    assert all(e.startswith("data: ") for e in events) and events[-1] == "data: [DONE]"
    pieces = [json.loads(e[6:]) for e in events[:-1]]
    text = "".join(p["choices"][0]["text"] for p in pieces)
    plain = client.completions.create(model="one", prompt="The movie was", max_tokens=5, temperature=0)
    assert text == plain.choices[0].text


def test_sampling_honours_temperature_and_seed(client: OpenAI) -> None:
    same = {chat(client, "one", temperature=1.5, seed=7).choices[0].message.content for _ in range(2)}
    assert len(same) == 1
    varied = {chat(client, "one", temperature=1.5, seed=s).choices[0].message.content for s in range(4)}
    assert len(varied) > 1
    streamed = chat(client, "one", temperature=1.5, seed=7, stream=True)
    assert "".join(c.choices[0].delta.content or "" for c in streamed if c.choices) == same.pop()


def test_errors_are_openai_shaped_and_the_server_survives(client: OpenAI,
                                                          server: tuple[str, AdapterSet, object]) -> None:
    with pytest.raises(openai.NotFoundError) as err:
        chat(client, "three")
    assert err.value.status_code == 404 and err.value.body["code"] == "model_not_found"
    assert "tiny, one, two" in err.value.body["message"]

    with pytest.raises(openai.BadRequestError) as err:
        chat(client, "one", max_tokens=33)
    assert err.value.body["code"] == "max_tokens_exceeded" and "limit of 32" in err.value.body["message"]

    with pytest.raises(openai.BadRequestError) as err:
        client.chat.completions.create(model="one", messages=[{"role": "user", "content": "word " * 100}])
    assert err.value.body["code"] == "context_length_exceeded"

    for raw in (b'{"model": "one", "messages": [', b"not json at all"):
        r = httpx.post(f"{server[0]}/v1/chat/completions", content=raw, timeout=10,
                       headers={"content-type": "application/json"})
        assert r.status_code == 400 and r.json()["error"]["code"] == "invalid_json"
        assert set(r.json()["error"]) == {"message", "type", "param", "code"}
    r = httpx.post(f"{server[0]}/v1/chat/completions", json={"model": "one"}, timeout=10)
    assert r.status_code == 400 and "messages: Field required" in r.json()["error"]["message"]
    r = httpx.post(f"{server[0]}/v1/chat/completions", json={"model": "one", "messages": [], "temperature": 9},
                   timeout=10)
    assert r.status_code == 400 and "temperature" in r.json()["error"]["message"]

    assert chat(client, "one").choices[0].message.content  # still serving


def test_over_the_concurrency_cap_is_a_429(client: OpenAI, server: tuple[str, AdapterSet, object]) -> None:
    gate = server[2].state.ctx.gate
    releases = [gate.enter() for _ in range(gate.cap)]  # as if four requests were running
    try:
        with pytest.raises(openai.RateLimitError) as err:
            chat(client, "one")
        assert err.value.status_code == 429 and err.value.body["code"] == "rate_limit_exceeded"
    finally:
        for release in releases:
            release()
            release()  # a second call gives nothing back twice
    assert chat(client, "one").choices[0].message.content
    assert gate.count == 0


def test_concurrent_requests_each_get_their_own_adapter(client: OpenAI, server: tuple[str, AdapterSet, object],
                                                        tiny_model_dir: Path, loras: dict[str, Path]) -> None:
    batcher = server[2].state.ctx.batcher
    before = len(batcher.batches)
    plan = ["one", "two", "one", "two"]
    results: dict[int, str] = {}
    start = threading.Barrier(len(plan))

    def call(i: int) -> None:
        start.wait()
        results[i] = chat(client, plan[i]).choices[0].message.content

    threads = [threading.Thread(target=call, args=(i,)) for i in range(len(plan))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    want = {name: direct(tiny_model_dir, loras[name]) for name in ("one", "two")}
    assert [results[i] for i in range(len(plan))] == [want[name] for name in plan]
    assert sum(list(batcher.batches)[before:]) == 4


def test_batcher_groups_by_adapter_and_settings(server: tuple[str, AdapterSet, object]) -> None:
    aset = server[1]
    batcher = Batcher(aset, window_s=0.5, max_batch=8)
    text = prompt_text(aset.tokenizer, PROMPT)
    greedy, longer = Params(8, 0.0, 1.0, None), Params(9, 0.0, 1.0, None)
    jobs = [("one", greedy), ("two", greedy), ("one", greedy), ("two", greedy), ("one", longer)]
    futures = [batcher.submit(text, adapter, params) for adapter, params in jobs]  # well within 0.5 s
    choices = [f.result(timeout=60) for f in futures]
    batcher.stop()
    assert sorted(batcher.batches) == [1, 2, 2]  # one+8, two+8, one+9 tokens
    assert choices[0] == choices[2] and choices[1] == choices[3] and choices[0].text != choices[1].text
    assert choices[4].text.startswith(choices[0].text) and choices[4].completion_tokens == 9


def test_serve_command_wires_registry_names(tiny_model_dir: Path, loras: dict[str, Path],
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    from instructune.adapters.registry import register_adapter
    from instructune.cli import main

    register_adapter("reg", loras["one"])
    seen = {}
    monkeypatch.setattr(uvicorn, "run", lambda app, host, port, **kw: seen.update(app=app, host=host, port=port))
    assert main(["serve", "--model", str(tiny_model_dir), "--adapters", "reg", f"adhoc={loras['two']}",
                 "--port", "8123"]) == 0
    assert seen["host"] == "127.0.0.1" and seen["port"] == 8123
    with serve_in_background(seen["app"]) as port:
        names = httpx.get(f"http://127.0.0.1:{port}/v1/models", timeout=10).json()["data"]
    assert [m["id"] for m in names] == [str(tiny_model_dir), "reg", "adhoc"]
