"""The HTTP API fuzzed from its own OpenAPI schema with schemathesis: requests that fit the schema and
requests that break it, for every endpoint, on a tiny base + adapter served in this process. No answer may
be a 5xx, and none may take longer than a bound."""

from __future__ import annotations

import time
from pathlib import Path

import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis import GenerationMode

from instructune.adapters.merge import random_lora
from instructune.serving.app import create_app
from instructune.serving.hotswap import AdapterSet
from instructune.serving.protocol import Limits

EXAMPLES, BOUND_S = 60, 20.0
"""Generated requests per mode (schema-fitting and schema-breaking) across every endpoint; slowest allowed."""


def test_every_endpoint_survives_generated_requests(tiny_model_dir: Path, tmp_path: Path) -> None:
    lora = random_lora(tiny_model_dir, tmp_path / "one", seed=1)
    app = create_app(AdapterSet(str(tiny_model_dir), {"one": lora}, served_name="tiny"),
                     Limits(max_tokens=8, default_max_tokens=4, max_prompt_tokens=64, max_concurrent=4))
    schema = schemathesis.openapi.from_asgi("/openapi.json", app)
    seen: dict[str, list[int]] = {}
    slowest = [0.0]

    for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):
        @given(case=schema.as_strategy(generation_mode=mode))
        @settings(max_examples=EXAMPLES, deadline=None, database=None, derandomize=True,
                  suppress_health_check=list(HealthCheck))
        def check(case: schemathesis.Case) -> None:
            start = time.monotonic()
            response = case.call()
            took = time.monotonic() - start
            slowest[0] = max(slowest[0], took)
            seen.setdefault(f"{case.method} {case.path}", []).append(response.status_code)
            assert response.status_code < 500, (case.method, case.path, case.body, response.text[:300])
            assert took < BOUND_S, (case.method, case.path, took)
            if response.status_code >= 400:
                assert set(response.json()["error"]) == {"message", "type", "param", "code"}

        check()

    assert {"POST /v1/chat/completions", "POST /v1/completions", "GET /v1/models", "GET /health"} <= set(seen)
    assert sum(len(codes) for codes in seen.values()) >= EXAMPLES  # it really sent requests
    assert any(code == 200 for codes in seen.values() for code in codes)
