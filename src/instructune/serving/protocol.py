"""The OpenAI-compatible API's shapes: limits, requests, sampling parameters, errors."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field


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


class RequestBase(BaseModel):
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


class ChatRequest(RequestBase):
    messages: list[Message] = Field(min_length=1)
    max_completion_tokens: int | None = Field(None, ge=1)


class CompletionRequest(RequestBase):
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
