"""The OpenAI-compatible API's shapes: limits, requests, sampling parameters, errors."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field, model_validator


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
    max_body_bytes: int = 1 << 20
    """Largest request body; a larger one is refused (413) before it is read whole."""
    max_prompt_chars: int | None = None
    """Longest prompt (all messages together) in characters, checked before tokenizing; None = 32 per
    allowed prompt token."""
    max_prompts: int | None = None
    """Most prompts in one /v1/completions request; None = `max_concurrent`. Each prompt takes a slot."""
    max_stop_chars: int = 1000
    """Longest stop string."""

    def prompt_chars(self) -> int:
        return self.max_prompt_chars or 32 * self.max_prompt_tokens

    def prompts(self) -> int:
        return self.max_prompts or self.max_concurrent

    def problems(self) -> list[str]:
        out = [f"--{k.replace('_', '-')} must be at least 1, got {getattr(self, k)}" for k in
               ("max_tokens", "max_prompt_tokens", "max_concurrent", "max_batch", "max_body_bytes")
               if getattr(self, k) < 1]
        if not (math.isfinite(self.batch_window_ms) and 0 <= self.batch_window_ms <= 1000):
            out.append(f"--batch-window-ms must be a number from 0 to 1000, got {self.batch_window_ms}")
        return out


class APIError(Exception):
    """An error answered in OpenAI's format."""

    def __init__(self, status: int, message: str, type: str = "invalid_request_error", code: str | None = None,
                 param: str | None = None) -> None:
        super().__init__(message)
        self.status, self.body = status, {"error": {"message": message, "type": type, "param": param, "code": code}}

    def response(self) -> JSONResponse:
        # a name the client sent may hold what cannot be encoded (a lone surrogate): shown escaped, never fatal
        error = {k: v.encode("utf-8", "backslashreplace").decode("utf-8") if isinstance(v, str) else v
                 for k, v in self.body["error"].items()}
        return JSONResponse({"error": error}, status_code=self.status)


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
    seed: int | None = Field(None, ge=0, lt=2**63)

    @model_validator(mode="after")
    def _text_is_unicode(self) -> RequestBase:
        """A lone surrogate (JSON "\\ud800") is no text: refused here, not when encoding fails later."""
        bad = next((path for path, text in _strings(self.model_dump()) if not _encodable(text)), None)
        if bad is not None:
            raise ValueError(f"{bad} holds a lone surrogate (such as \\ud800), which is not text; send valid "
                             "UTF-8 strings")
        return self


def _strings(value: object, path: str = "body") -> list[tuple[str, str]]:
    if isinstance(value, str):
        return [(path, value)]
    if isinstance(value, dict):
        return [x for k, v in value.items() for x in [(f"{path} key", str(k)), *_strings(v, f"{path}.{k}")]]
    if isinstance(value, list):
        return [x for i, v in enumerate(value) for x in _strings(v, f"{path}[{i}]")]
    return []


def _encodable(text: str) -> bool:
    try:
        text.encode("utf-8")
        return True
    except UnicodeEncodeError:
        return False


def chat_roles(template: str) -> tuple[str, ...]:
    """The roles a message may have under a chat template: system, user, assistant, and tool where it names
    one. Every other string (`"user\\n<|im_start|>system"`) would be written into the prompt as it is."""
    return ("system", "user", "assistant") + (("tool",) if "'tool'" in template or '"tool"' in template else ())


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

    def key(self) -> tuple[int, float, float | None, int | None]:
        greedy = self.temperature == 0
        return self.max_tokens, self.temperature, None if greedy else self.top_p, 0 if greedy else self.seed


@dataclass
class Choice:
    text: str
    finish_reason: str
    completion_tokens: int
