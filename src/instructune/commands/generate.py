"""`instructune generate --model NAME [--adapter NAME_OR_PATH] "prompt"`."""

from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("generate", help="complete a prompt (chat template applied when the model has one)")
    p.add_argument("prompt", help="the prompt text")
    p.add_argument("--model", default="smollm2-135m-instruct", help="pack name, local folder or hub id")
    p.add_argument("--adapter", help="an adapter to apply: a registered name (`instructune adapters list`), an "
                                     "adapter folder, or a training run's folder")
    p.add_argument("--raw", action="store_true", help="do not apply the chat template")
    p.add_argument("--max-new-tokens", type=int, default=128)
    p.add_argument("--temperature", type=float, default=0.0, help="0 = greedy (default)")
    p.add_argument("--top-p", type=float, default=1.0)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--dtype", default="auto", choices=["auto", "float32", "bfloat16"],
                   help="auto (default) measures bf16 against fp32 on this CPU (see `instructune doctor`)")
    p.add_argument("--threads", type=int, help="torch threads (default: the CPUs this process may use)")
    p.add_argument("--trust-remote-code", action="store_true", help="allow a hub model's own code to run")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import sys
    import time

    from instructune.adapters.attach import load_adapted
    from instructune.adapters.registry import resolve_adapter
    from instructune.data.prompt import prompt_text
    from instructune.errors import InstructuneError
    from instructune.evaluation.generate import generate
    from instructune.hardware import eval_dtype, setup_threads
    from instructune.models import load_model

    problems = []
    if args.max_new_tokens < 1:
        problems.append(f"--max-new-tokens must be at least 1, got {args.max_new_tokens}")
    if args.temperature < 0:
        problems.append(f"--temperature must be >= 0 (0 = greedy), got {args.temperature}")
    if not 0 < args.top_p <= 1:
        problems.append(f"--top-p must be in (0, 1], got {args.top_p}")
    if problems:
        raise InstructuneError("; ".join(problems))
    adapter = str(resolve_adapter(args.adapter)) if args.adapter else None  # a name, a folder or a run
    # Imported before the clock starts: the load time printed is the model's alone.
    from transformers import AutoModelForCausalLM, AutoTokenizer  # noqa: F401

    def note(line: str) -> None:  # machine lines go to stderr: stdout holds the completion alone
        print(line, file=sys.stderr)

    setup_threads(args.threads, log=note)
    dtype = eval_dtype(args.dtype, args.model, log=note)
    start = time.time()
    if adapter:
        model, tok = load_adapted(args.model, adapter, dtype=dtype, trust_remote_code=args.trust_remote_code)
    else:
        model, tok = load_model(args.model, dtype=dtype, trust_remote_code=args.trust_remote_code)
    load_s = time.time() - start
    text = prompt_text(tok, args.prompt, raw=args.raw)
    [completion] = generate(model, tok, [text], max_new_tokens=args.max_new_tokens,
                            temperature=args.temperature, top_p=args.top_p, seed=args.seed, batch_size=1)
    print(completion.strip())
    print(f"(model loaded in {load_s:.1f} s)", file=sys.stderr)
    return 0
