"""`instructune serve --model BASE [--adapters NAME ...]`: an OpenAI-compatible server."""

from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("serve", help="serve a base model and its adapters over an OpenAI-compatible HTTP API")
    p.add_argument("--model", default="smollm2-135m-instruct", help="base: pack name, local folder or hub id")
    p.add_argument("--adapters", nargs="*", default=[], metavar="NAME",
                   help="registered adapter names (`instructune adapters list`), or NAME=PATH for an adapter folder")
    p.add_argument("--served-name", help="the `model` id of the base in requests (default: --model as given)")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default: this machine only)")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--dtype", default="auto", choices=["auto", "float32", "bfloat16"],
                   help="auto (default) measures bf16 against fp32 on this CPU (see `instructune doctor`)")
    p.add_argument("--threads", type=int, help="torch threads (default: the CPUs this process may use)")
    p.add_argument("--max-tokens", type=int, default=512, help="largest max_tokens a request may ask for")
    p.add_argument("--max-prompt-tokens", type=int, default=2048, help="longest prompt, in tokens")
    p.add_argument("--max-concurrent", type=int, default=8, help="requests in flight at once; more get a 429")
    p.add_argument("--batch-window-ms", type=float, default=5.0, help="how long to gather requests into a batch")
    p.add_argument("--max-body-bytes", type=int, default=1 << 20, help="largest request body (default 1 MiB)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import uvicorn

    from instructune.adapters.registry import validate_name
    from instructune.errors import collect
    from instructune.hardware import eval_dtype, setup_threads
    from instructune.serving.app import create_app
    from instructune.serving.hotswap import AdapterSet
    from instructune.serving.protocol import Limits

    limits = Limits(max_tokens=args.max_tokens, max_prompt_tokens=args.max_prompt_tokens,
                    max_concurrent=args.max_concurrent, batch_window_ms=args.batch_window_ms,
                    default_max_tokens=max(1, min(128, args.max_tokens)), max_body_bytes=args.max_body_bytes)
    problems = limits.problems()
    if not 0 < args.port < 65536:
        problems.append(f"--port must be 1-65535, got {args.port}")
    collect(problems, "invalid serve options")  # before the model loads: a typo costs no wait
    adapters = {}
    for item in args.adapters:
        name, sep, path = item.partition("=")
        adapters[validate_name(name)] = path if sep else name
    setup_threads(args.threads)
    aset = AdapterSet(args.model, adapters, dtype=eval_dtype(args.dtype, args.model), served_name=args.served_name)
    print(f"serving {aset.base_name}" + (f" with adapters {', '.join(aset.names)}" if aset.names else "")
          + f" at http://{args.host}:{args.port}/v1")
    if args.host not in ("127.0.0.1", "localhost", "::1"):
        print(f"note: bound to {args.host}: other machines can reach this server, and it has no authentication")
    # a bounded graceful shutdown: SIGTERM stops the server even with a request stuck in flight
    uvicorn.run(create_app(aset, limits), host=args.host, port=args.port, log_level="info",
                timeout_graceful_shutdown=10)
    return 0
