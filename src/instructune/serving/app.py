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

A chat request is rendered with its model's own chat template (an adapter's saved one, else the
base's); a role must be one that template knows (400 naming `messages[i].role` otherwise), and
message content is text: a special-token string in it is never a control token.
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

import anyio.to_thread
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, StreamingResponse
from starlette.background import BackgroundTask
from starlette.exceptions import HTTPException
from starlette.types import ASGIApp

from instructune.serving.generation import Batcher, Cancel, Gate
from instructune.serving.hotswap import AdapterSet
from instructune.serving.protocol import (
    APIError,
    ChatRequest,
    CompletionRequest,
    Limits,
    Message,
    Params,
    RequestBase,
    chat_roles,
)

Card = dict[str, str | int]
"""One entry of GET /v1/models (a runtime alias: FastAPI reads the routes' return annotations)."""


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
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        yield
        await asyncio.to_thread(ctx.batcher.stop)

    app = FastAPI(title="instructune", lifespan=lifespan, strict_content_type=False)  # no Content-Type: JSON
    app.state.ctx = ctx
    app.add_middleware(BodyLimit, limit=limits.max_body_bytes)
    _install_error_handlers(app)

    @app.get("/health", response_model=None)
    async def health() -> JSONResponse | dict[str, object]:
        body = {"status": "ok", "model": adapter_set.base_name, "adapters": adapter_set.names,
                "in_flight": ctx.gate.count}
        if not ctx.batcher.alive():
            return JSONResponse({**body, "status": "error", "error": "the generation thread has stopped; requests "
                                 "restart it, and its error is in the server's log"}, status_code=503)
        return body

    @app.get("/v1/models")
    async def models() -> dict[str, str | list[Card]]:
        names = [adapter_set.base_name, *adapter_set.names]
        return {"object": "list", "data": [_model_card(ctx, n) for n in names]}

    @app.get("/v1/models/{model_id:path}")
    async def model(model_id: str) -> Card:
        _adapter_for(ctx, model_id)
        return _model_card(ctx, model_id)

    @app.post("/v1/chat/completions", response_model=None)
    async def chat(req: ChatRequest) -> StreamingResponse | dict[str, object]:
        adapter = _adapter_for(ctx, req.model)
        _check_chars(ctx, sum(len(m.text()) for m in req.messages), "messages")
        # templating and tokenizing: off the loop
        text = await asyncio.to_thread(_chat_prompt, ctx, req.messages, adapter)
        return await _respond(ctx, req, [text], adapter, req.max_completion_tokens or req.max_tokens, chat=True)

    @app.post("/v1/completions", response_model=None)
    async def completions(req: CompletionRequest) -> StreamingResponse | dict[str, object]:
        adapter = _adapter_for(ctx, req.model)
        prompts = [req.prompt] if isinstance(req.prompt, str) else req.prompt
        if not prompts:
            raise APIError(400, "prompt is an empty list; send a string or a list of strings.", param="prompt")
        if len(prompts) > limits.prompts():
            raise APIError(400, f"prompt is a list of {len(prompts)} prompts; this server takes at most "
                                f"{limits.prompts()} per request (each takes one of its --max-concurrent slots): "
                                "send them in several requests.", code="too_many_prompts", param="prompt")
        for prompt in prompts:
            _check_chars(ctx, len(prompt), "prompt")
        return await _respond(ctx, req, prompts, adapter, req.max_tokens or 16, chat=False)  # OpenAI's default 16

    return app


class BodyLimit:
    """ASGI middleware: a request body over `limit` bytes is refused (413) by its Content-Length before any of
    it is read, or, chunked, as soon as it passes the limit: the app then sees the client leave and what it
    would answer is dropped. Nothing that size is ever parsed."""

    def __init__(self, app: ASGIApp, limit: int) -> None:
        self.app, self.limit = app, limit

    async def __call__(self, scope: dict, receive: Callable, send: Callable) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        length = dict(scope.get("headers") or []).get(b"content-length", b"0")
        if length.isdigit() and int(length) > self.limit:
            return await self._refuse(send)
        state = {"seen": 0, "refused": False}

        async def counted() -> dict:
            if state["refused"]:
                return {"type": "http.disconnect"}
            message = await receive()
            state["seen"] += len(message.get("body", b""))
            if state["seen"] > self.limit:
                state["refused"] = True
                await self._refuse(send)
                return {"type": "http.disconnect"}
            return message

        async def guarded(message: dict) -> None:
            if not state["refused"]:  # after the 413, the app's own answer goes nowhere
                await send(message)

        await self.app(scope, counted, guarded)

    async def _refuse(self, send: Callable) -> None:
        response = APIError(413, f"the request body is over this server's limit of {self.limit:,} bytes; send a "
                                 "shorter prompt (the limit is --max-body-bytes).", code="body_too_large").response()
        await send({"type": "http.response.start", "status": 413, "headers": response.raw_headers})
        await send({"type": "http.response.body", "body": response.body})


def _check_chars(ctx: _Context, chars: int, param: str) -> None:
    """The character limit, checked before anything is tokenized."""
    cap = ctx.limits.prompt_chars()
    if chars > cap:
        raise APIError(400, f"the {param} are {chars:,} characters; this server takes at most {cap:,} (about "
                            f"{ctx.limits.max_prompt_tokens} tokens): shorten the {param}.",
                       code="context_length_exceeded", param=param)


def _model_card(ctx: _Context, name: str) -> Card:
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


def _chat_prompt(ctx: _Context, messages: list[Message], adapter: str | None) -> str:
    """The prompt as `adapter` reads it (its own saved chat template, else the base's); every role is one the
    template knows, and content stays text (`AdapterSet.chat_prompt`)."""
    template = ctx.aset.chat_template(adapter)
    if not template:
        raise APIError(400, f"the model '{adapter or ctx.aset.base_name}' has no chat template; use POST "
                            "/v1/completions with a raw prompt instead.", code="no_chat_template", param="messages")
    roles = chat_roles(template)
    for i, m in enumerate(messages):
        if m.role not in roles:
            raise APIError(400, f"messages[{i}].role is {m.role!r}; a role is one of {', '.join(roles)}: send one "
                                "of them (the text goes in content).", code="invalid_role", param=f"messages[{i}].role")
    try:
        return ctx.aset.chat_prompt([{"role": m.role, "content": m.text()} for m in messages], adapter)
    except Exception as e:  # the template's own checks (roles, order) raise jinja errors
        raise APIError(400, f"the chat template rejected these messages: {e}", param="messages") from None


def _params(ctx: _Context, req: RequestBase, texts: list[str], max_tokens: int | None) -> tuple[Params, list[int]]:
    """Check the request against the limits; returns its sampling settings and each prompt's token count."""
    lim = ctx.limits
    max_tokens = max_tokens or min(lim.default_max_tokens, lim.max_tokens)
    if max_tokens > lim.max_tokens:
        raise APIError(400, f"max_tokens {max_tokens} is over this server's limit of {lim.max_tokens}; ask for at "
                            f"most {lim.max_tokens} (or start the server with a higher --max-tokens).",
                       code="max_tokens_exceeded", param="max_tokens")
    counts = [len(ids) for ids in ctx.aset.encode(texts)]
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
    if (longest := max((len(x) for x in stops), default=0)) > lim.max_stop_chars:
        raise APIError(400, f"a stop string is {longest:,} characters; at most {lim.max_stop_chars} are allowed.",
                       code="stop_too_long", param="stop")
    temperature = 1.0 if req.temperature is None else req.temperature  # OpenAI's default
    return Params(max_tokens, temperature, req.top_p or 1.0, req.seed, stops), counts


async def _respond(ctx: _Context, req: RequestBase, texts: list[str], adapter: str | None, max_tokens: int | None,
                   chat: bool) -> StreamingResponse | dict[str, object]:
    params, counts = await asyncio.to_thread(_params, ctx, req, texts, max_tokens)  # tokenizing: off the loop
    release = ctx.gate.enter(len(texts))
    head = {"id": f"{'chatcmpl' if chat else 'cmpl'}-{uuid.uuid4().hex[:24]}", "created": int(time.time()),
            "model": req.model}
    if req.stream:
        # released by the stream's end, or after the response if the stream never started
        cancel = Cancel()  # set when the client goes: a prompt still in line leaves it, a running one stops
        events = _sse(ctx, req, head, texts, adapter, params, sum(counts), chat, release, cancel)
        return StreamingResponse(_until_gone(events, cancel), media_type="text/event-stream",
                                 background=BackgroundTask(release))
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


def _sse(ctx: _Context, req: RequestBase, head: dict[str, object], texts: list[str], adapter: str | None,
         params: Params, prompt_tokens: int, chat: bool, release: Callable[[], None], cancel: Cancel) -> Iterator[str]:
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
            for delta, reason, n in ctx.batcher.stream(text, adapter, params, cancel):
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


async def _until_gone(events: Iterator[str], cancel: Cancel) -> AsyncIterator[str]:
    """`events`, each read in a worker thread. When the client goes, starlette cancels this at once (the read
    in flight is left to finish in its thread, not awaited) and `cancel` is set: a prompt still waiting for
    the model leaves the line without a prefill, a running one stops at its next token."""
    try:
        while (event := await anyio.to_thread.run_sync(next, events, None, abandon_on_cancel=True)) is not None:
            yield event
    finally:
        cancel.set()


def _event(obj: dict[str, object]) -> str:
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
        if not isinstance(exc.body, (dict, bytes, str, type(None))) or (isinstance(exc.body, str) and errors and
                                                                         errors[0].get("loc") == ("body",)):
            kind = "a JSON " + {list: "array", str: "string", int: "number", float: "number",
                                bool: "boolean"}.get(type(exc.body), type(exc.body).__name__)
            return APIError(400, f"the request body is {kind}; send a JSON object such as "
                                 '{"model": "...", "messages": [{"role": "user", "content": "Hi"}]}.',
                            code="invalid_request").response()
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
