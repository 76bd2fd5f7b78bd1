"""An OpenAI-compatible HTTP server over one base model and its adapters (`instructune serve`).

    GET  /v1/models             the base (its served name) and every adapter, by name
    POST /v1/chat/completions   the request's `model` picks the base or an adapter
    POST /v1/completions        raw prompts, no chat template
    GET  /health

Non-streamed requests go through a micro-batcher: requests arriving within a few ms with the
same adapter and sampling settings become one left-padded `generate` call. Streamed requests
run `model.generate` in a thread feeding a `TextIteratorStreamer`, sent as server-sent
events in OpenAI's chunk format and closed by `data: [DONE]`. Errors use OpenAI's body,
`{"error": {"message", "type", "param", "code"}}`: an unknown model is a 404, a request
over the limits or malformed a 400, too many at once a 429.
"""

from __future__ import annotations

import asyncio
import json
import queue
import random
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import Future
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, StreamingResponse
from pydantic import BaseModel, ConfigDict, Field
from starlette.exceptions import HTTPException

from instructune.adapters import AdapterSet


@dataclass
class Limits:
    """What one request may ask for, and how many may run at once."""

    max_tokens: int = 512
    """Largest `max_tokens` a request may ask for; more is refused with a 400."""
    default_max_tokens: int = 128
    """`max_tokens` of a chat request that sets none (capped by `max_tokens`)."""
    max_prompt_tokens: int = 2048
    """Longest prompt, in tokens after the chat template; longer is refused with a 400."""
    max_concurrent: int = 8
    """Requests in flight at once; one more gets a 429."""
    batch_window_ms: float = 5.0
    """How long the batcher waits for more requests to join a batch."""
    max_batch: int = 8
    """Most prompts in one batched `generate` call."""


class APIError(Exception):
    """An error answered in OpenAI's format."""

    def __init__(self, status: int, message: str, type: str = "invalid_request_error", code: str | None = None,
                 param: str | None = None) -> None:
        super().__init__(message)
        self.status, self.body = status, {"error": {"message": message, "type": type, "param": param, "code": code}}

    def response(self) -> JSONResponse:
        return JSONResponse(self.body, status_code=self.status)


class _Request(BaseModel):
    model_config = ConfigDict(extra="allow")  # clients send fields we do not use (user, logprobs, ...)
    model: str
    max_tokens: int | None = Field(None, ge=1)
    temperature: float | None = Field(None, ge=0, le=2)
    top_p: float | None = Field(None, gt=0, le=1)
    stop: str | list[str] | None = None
    stream: bool | None = False
    stream_options: dict[str, Any] | None = None
    n: int | None = Field(1, ge=1, le=1, description="one choice per prompt")
    seed: int | None = None


class Message(BaseModel):
    model_config = ConfigDict(extra="allow")
    role: str
    content: str | list[dict[str, Any]] | None = None

    def text(self) -> str:
        if isinstance(self.content, list):  # [{"type": "text", "text": ...}, ...]
            return "".join(part.get("text", "") for part in self.content if part.get("type") == "text")
        return self.content or ""


class ChatRequest(_Request):
    messages: list[Message] = Field(min_length=1)
    max_completion_tokens: int | None = Field(None, ge=1)


class CompletionRequest(_Request):
    prompt: str | list[str]


@dataclass(frozen=True)
class Params:
    """Sampling settings shared by every prompt of one batched `generate` call."""

    max_tokens: int
    temperature: float
    top_p: float
    seed: int | None
    stop: tuple[str, ...] = field(default=(), compare=False)

    def key(self) -> tuple[Any, ...]:
        greedy = self.temperature == 0
        return self.max_tokens, self.temperature, None if greedy else self.top_p, 0 if greedy else self.seed


@dataclass
class Choice:
    text: str
    finish_reason: str
    completion_tokens: int


class StopScanner:
    """Cuts a growing text at the first stop string, holding back a tail that may start one."""

    def __init__(self, stops: tuple[str, ...]) -> None:
        self.stops, self.buf, self.hit = [s for s in stops if s], "", False

    def feed(self, piece: str) -> str:
        self.buf += piece
        found = [i for i in (self.buf.find(s) for s in self.stops) if i >= 0]
        if found:
            out, self.buf, self.hit = self.buf[:min(found)], "", True
            return out
        keep = max((k for s in self.stops for k in range(1, len(s)) if self.buf.endswith(s[:k])), default=0)
        out, self.buf = self.buf[:len(self.buf) - keep], self.buf[len(self.buf) - keep:]
        return out

    def flush(self) -> str:
        out, self.buf = self.buf, ""
        return out


def finish(aset: AdapterSet, raw: str, params: Params) -> Choice:
    """A whole completion cut at its stop string; 'length' when it used up max_tokens."""
    scan = StopScanner(params.stop)
    text = scan.feed(raw)
    text += "" if scan.hit else scan.flush()
    # generate returns text: re-encoded, capped (broken UTF-8 pieces re-encode to more tokens than were made)
    n = min(len(aset.tokenizer(raw, add_special_tokens=False)["input_ids"]), params.max_tokens)
    return Choice(text, "stop" if scan.hit or n < params.max_tokens else "length", n)


@dataclass
class _Job:
    text: str
    adapter: str | None
    params: Params
    future: Future = field(default_factory=Future)


class Batcher:
    """Groups requests that arrive within `window_s` and share adapter and sampling into one generate call."""

    def __init__(self, aset: AdapterSet, window_s: float, max_batch: int) -> None:
        self.aset, self.window_s, self.max_batch = aset, window_s, max_batch
        self.jobs: queue.Queue[_Job | None] = queue.Queue()
        self.thread: threading.Thread | None = None
        self.lock = threading.Lock()
        self.batches: deque[int] = deque(maxlen=1000)  # sizes of the latest generate calls

    def submit(self, text: str, adapter: str | None, params: Params) -> Future:
        with self.lock:
            if self.thread is None:
                self.thread = threading.Thread(target=self._loop, name="instructune-batcher", daemon=True)
                self.thread.start()
        job = _Job(text, adapter, params)
        self.jobs.put(job)
        return job.future

    def stop(self) -> None:
        with self.lock:
            thread, self.thread = self.thread, None  # a later submit starts a new one
        if thread is not None:
            self.jobs.put(None)
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
            groups: dict[tuple[Any, ...], list[_Job]] = {}
            for job in jobs:
                groups.setdefault((job.adapter, *job.params.key()), []).append(job)
            for group in groups.values():
                for i in range(0, len(group), self.max_batch):
                    self._run(group[i:i + self.max_batch])

    def _run(self, jobs: list[_Job]) -> None:
        p = jobs[0].params
        try:
            texts = self.aset.generate([j.text for j in jobs], jobs[0].adapter, max_new_tokens=p.max_tokens,
                                       batch_size=len(jobs), temperature=p.temperature, top_p=p.top_p,
                                       seed=p.seed if p.seed is not None else random.randrange(2**31))
            self.batches.append(len(jobs))
            for job, text in zip(jobs, texts, strict=True):
                job.future.set_result(finish(self.aset, text, job.params))
        except Exception as e:  # answered as a 500 by the request that waits on it
            for job in jobs:
                if not job.future.done():
                    job.future.set_exception(e)


def stream(aset: AdapterSet, text: str, adapter: str | None,
           params: Params) -> Iterator[tuple[str, str | None, int | None]]:
    """Yield (text delta, None, None) as tokens arrive, then ("", finish_reason, completion tokens).

    A stop string, or the client going away (GeneratorExit at a yield), ends generation at the next token.
    """
    seed = params.seed if params.seed is not None else random.randrange(2**31)
    tokens = aset.stream(text, adapter, max_new_tokens=params.max_tokens, temperature=params.temperature,
                         top_p=params.top_p, seed=seed)
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
        tokens.close()
    done = scan.hit or tokens.eos or tokens.count < params.max_tokens
    yield "", "stop" if done else "length", tokens.count


class Gate:
    """Counts requests in flight; refuses one over the cap instead of queueing it."""

    def __init__(self, cap: int) -> None:
        self.cap, self.count, self.lock = cap, 0, threading.Lock()

    def enter(self) -> Callable[[], None]:
        """Take a slot (or raise a 429); returns the function that gives it back, once however often called."""
        with self.lock:
            if self.count >= self.cap:
                raise APIError(429, f"the server is busy: {self.cap} requests are already running; retry shortly "
                                    "(or start the server with a higher --max-concurrent).",
                               "rate_limit_error", "rate_limit_exceeded")
            self.count += 1
        held = [True]

        def leave() -> None:
            with self.lock:
                if held:
                    held.pop()
                    self.count -= 1
        return leave


@dataclass
class _Context:
    aset: AdapterSet
    limits: Limits
    batcher: Batcher
    gate: Gate
    created: int = field(default_factory=lambda: int(time.time()))


def create_app(adapter_set: AdapterSet, limits: Limits | None = None) -> FastAPI:
    """The FastAPI app serving `adapter_set`; run it with uvicorn (`uvicorn.run(app, host=..., port=...)`)."""
    limits = limits or Limits()
    ctx = _Context(adapter_set, limits, Batcher(adapter_set, limits.batch_window_ms / 1000, limits.max_batch),
                   Gate(limits.max_concurrent))

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> Any:
        yield
        await asyncio.to_thread(ctx.batcher.stop)

    app = FastAPI(title="instructune", lifespan=lifespan, strict_content_type=False)  # no Content-Type: JSON
    app.state.ctx = ctx
    _install_error_handlers(app)

    @app.get("/health")
    async def health() -> dict[str, Any]:
        return {"status": "ok", "model": adapter_set.base_name, "adapters": adapter_set.names,
                "in_flight": ctx.gate.count}

    @app.get("/v1/models")
    async def models() -> dict[str, Any]:
        names = [adapter_set.base_name, *adapter_set.names]
        return {"object": "list", "data": [_model_card(ctx, n) for n in names]}

    @app.get("/v1/models/{model_id:path}")
    async def model(model_id: str) -> dict[str, Any]:
        _adapter_for(ctx, model_id)
        return _model_card(ctx, model_id)

    @app.post("/v1/chat/completions")
    async def chat(req: ChatRequest) -> Any:
        adapter = _adapter_for(ctx, req.model)
        text = _chat_prompt(ctx, req.messages)
        return await _respond(ctx, req, [text], adapter, req.max_completion_tokens or req.max_tokens, chat=True)

    @app.post("/v1/completions")
    async def completions(req: CompletionRequest) -> Any:
        adapter = _adapter_for(ctx, req.model)
        prompts = [req.prompt] if isinstance(req.prompt, str) else req.prompt
        if not prompts:
            raise APIError(400, "prompt is an empty list; send a string or a list of strings.", param="prompt")
        return await _respond(ctx, req, prompts, adapter, req.max_tokens or 16, chat=False)  # OpenAI's default 16

    return app


def _model_card(ctx: _Context, name: str) -> dict[str, Any]:
    card = {"id": name, "object": "model", "created": ctx.created, "owned_by": "instructune"}
    return card if name == ctx.aset.base_name else {**card, "parent": ctx.aset.base_name}


def _adapter_for(ctx: _Context, model: str) -> str | None:
    """The request's `model`: the base's served name (None) or an adapter's name."""
    if model == ctx.aset.base_name:
        return None
    if model in ctx.aset.slots:
        return model
    served = ", ".join([ctx.aset.base_name, *ctx.aset.names])
    raise APIError(404, f"the model '{model}' does not exist on this server; served models: {served} "
                        "(GET /v1/models).", code="model_not_found", param="model")


def _chat_prompt(ctx: _Context, messages: list[Message]) -> str:
    tok = ctx.aset.tokenizer
    if not getattr(tok, "chat_template", None):
        raise APIError(400, f"the model '{ctx.aset.base_name}' has no chat template; use POST /v1/completions "
                            "with a raw prompt instead.", code="no_chat_template", param="messages")
    try:
        return tok.apply_chat_template([{"role": m.role, "content": m.text()} for m in messages], tokenize=False,
                                       add_generation_prompt=True)
    except Exception as e:  # the template's own checks (roles, order) raise jinja errors
        raise APIError(400, f"the chat template rejected these messages: {e}", param="messages") from None


def _params(ctx: _Context, req: _Request, texts: list[str], max_tokens: int | None) -> tuple[Params, list[int]]:
    """Check the request against the limits; returns its sampling settings and each prompt's token count."""
    lim = ctx.limits
    max_tokens = max_tokens or min(lim.default_max_tokens, lim.max_tokens)
    if max_tokens > lim.max_tokens:
        raise APIError(400, f"max_tokens {max_tokens} is over this server's limit of {lim.max_tokens}; ask for at "
                            f"most {lim.max_tokens} (or start the server with a higher --max-tokens).",
                       code="max_tokens_exceeded", param="max_tokens")
    counts = [len(ids) for ids in ctx.aset.tokenizer(texts, add_special_tokens=False)["input_ids"]]
    context = getattr(ctx.aset.base_model.config, "max_position_embeddings", None) or 10**9
    for n in counts:
        if n > lim.max_prompt_tokens or n + max_tokens > context:
            raise APIError(400, f"the prompt is {n} tokens; this server takes at most {lim.max_prompt_tokens} "
                                f"prompt tokens and {context} in all (prompt + max_tokens {max_tokens}); shorten "
                                "the prompt or lower max_tokens.", code="context_length_exceeded",
                           param="messages" if isinstance(req, ChatRequest) else "prompt")
    stops = (req.stop,) if isinstance(req.stop, str) else tuple(req.stop or ())
    if len(stops) > 4:
        raise APIError(400, f"stop has {len(stops)} strings; at most 4 are allowed.", param="stop")
    temperature = 1.0 if req.temperature is None else req.temperature  # OpenAI's default
    return Params(max_tokens, temperature, req.top_p or 1.0, req.seed, stops), counts


async def _respond(ctx: _Context, req: _Request, texts: list[str], adapter: str | None, max_tokens: int | None,
                   chat: bool) -> Any:
    params, counts = _params(ctx, req, texts, max_tokens)
    release = ctx.gate.enter()
    head = {"id": f"{'chatcmpl' if chat else 'cmpl'}-{uuid.uuid4().hex[:24]}", "created": int(time.time()),
            "model": req.model}
    if req.stream:
        from starlette.background import BackgroundTask

        # released by the stream's end, or after the response if the stream never started
        events = _sse(ctx, req, head, texts, adapter, params, sum(counts), chat, release)
        return StreamingResponse(events, media_type="text/event-stream", background=BackgroundTask(release))
    try:
        futures = [ctx.batcher.submit(text, adapter, params) for text in texts]
        choices = await asyncio.gather(*(asyncio.wrap_future(f) for f in futures))
    except Exception as e:
        raise APIError(500, f"generation failed: {e}", "server_error", "generation_failed") from e
    finally:
        release()
    usage = _usage(sum(counts), sum(c.completion_tokens for c in choices))
    if chat:
        body = [{"index": i, "message": {"role": "assistant", "content": c.text}, "logprobs": None,
                 "finish_reason": c.finish_reason} for i, c in enumerate(choices)]
        return {**head, "object": "chat.completion", "choices": body, "usage": usage}
    body = [{"index": i, "text": c.text, "logprobs": None, "finish_reason": c.finish_reason}
            for i, c in enumerate(choices)]
    return {**head, "object": "text_completion", "choices": body, "usage": usage}


def _sse(ctx: _Context, req: _Request, head: dict[str, Any], texts: list[str], adapter: str | None, params: Params,
         prompt_tokens: int, chat: bool, release: Callable[[], None]) -> Iterator[str]:
    """Server-sent events: one chunk per text delta, a last chunk with finish_reason per prompt, then [DONE]."""
    head = {**head, "object": "chat.completion.chunk" if chat else "text_completion"}

    def chunk(i: int, delta: str | None, reason: str | None, role: bool = False) -> str:
        if chat:
            d = {"role": "assistant", "content": ""} if role else ({"content": delta} if delta else {})
            choice = {"index": i, "delta": d, "logprobs": None, "finish_reason": reason}
        else:
            choice = {"index": i, "text": delta or "", "logprobs": None, "finish_reason": reason}
        return _event({**head, "choices": [choice]})

    completion_tokens = 0
    try:
        for i, text in enumerate(texts):
            if chat:
                yield chunk(i, None, None, role=True)
            for delta, reason, n in stream(ctx.aset, text, adapter, params):
                if delta or reason:
                    yield chunk(i, delta, reason)
                completion_tokens += n or 0
        if (req.stream_options or {}).get("include_usage"):
            yield _event({**head, "choices": [], "usage": _usage(prompt_tokens, completion_tokens)})
    except Exception as e:  # the status line is already sent: report in-band, as OpenAI does
        yield _event(APIError(500, f"generation failed: {e}", "server_error", "generation_failed").body)
    finally:
        release()
    yield "data: [DONE]\n\n"


def _event(obj: dict[str, Any]) -> str:
    return f"data: {json.dumps(obj, ensure_ascii=False)}\n\n"


def _usage(prompt: int, completion: int) -> dict[str, int]:
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}


def _install_error_handlers(app: FastAPI) -> None:
    """Every error in OpenAI's body; FastAPI's 422 for a malformed request becomes a 400."""

    @app.exception_handler(APIError)
    async def api_error(request: Request, exc: APIError) -> JSONResponse:
        return exc.response()

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        errors = list(exc.errors())
        bad_json = next((e for e in errors if e.get("type") == "json_invalid"), None)
        if bad_json is not None:
            why = (bad_json.get("ctx") or {}).get("error", "does not parse")
            return APIError(400, f"the request body is not valid JSON ({why}); send a JSON object such as "
                                 '{"model": "...", "messages": [{"role": "user", "content": "Hi"}]}.',
                            code="invalid_json").response()
        if isinstance(exc.body, (bytes, str)):  # a body FastAPI did not parse: not sent as JSON
            kind = request.headers.get("content-type", "none")
            return APIError(400, f"the request body was sent as Content-Type {kind}; send JSON with Content-Type: "
                                 "application/json (curl: -H 'Content-Type: application/json').",
                            code="invalid_json").response()
        where = [".".join(str(p) for p in e.get("loc", ())[1:]) or "body" for e in errors]
        problems = "; ".join(f"{w}: {e.get('msg')}" for w, e in zip(where, errors, strict=True))
        return APIError(400, f"invalid request: {problems}.", code="invalid_request",
                        param=where[0] if where else None).response()

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, exc: HTTPException) -> JSONResponse:
        message = (f"no route {request.method} {request.url.path}; this server has GET /v1/models, "
                   "POST /v1/chat/completions, POST /v1/completions, GET /health." if exc.status_code in (404, 405)
                   else str(exc.detail))
        return APIError(exc.status_code, message, code="not_found" if exc.status_code == 404 else None).response()
