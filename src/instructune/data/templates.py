"""Prompt templates: a data row -> (prompt, completion), written in YAML with Jinja2 bodies.

A template file is a mapping `{pack: NAME, templates: [...]}` (or just the list). Each entry:

    - id: sentiment
      task: classification            # classification | generation | summarization | qa | ...
      label_field: label              # classification: the row field holding the class label
      choices: {fresh: positive, rotten: negative}   # label -> the answer the model should say
      metrics: [accuracy, f1]
      stop: newline                   # where generation stops: newline | eos
      prompt: |-
        Is this movie review positive or negative?

        Review: {{ text }}

        Answer with one word: {{ choices.values() | or_list }}.
      completion: "{{ answer }}"      # classification default: the chosen label's answer

Bodies render in a bounded sandbox (`data.sandbox`: Jinja's immutable sandbox, with limits on
repetition, widths, loops, output and time) with `StrictUndefined`, so a user file cannot run code
or exhaust the machine, and a misspelt field is an error, never an empty string. Besides
the row's fields a body sees `choices` and, for classification, `answer`; the filters
`truncate_words(n)`, `first_sentence`, `drop_first_sentence` and `or_list` keep long articles
and choice lists tidy.
"""

from __future__ import annotations

import dataclasses
import difflib
import re
from collections.abc import Iterable
from dataclasses import dataclass
from functools import lru_cache
from importlib import resources
from pathlib import Path

import jinja2
from jinja2 import meta

from instructune.config import load_yaml_file
from instructune.data import sandbox
from instructune.data.packs import PACKS
from instructune.errors import InstructuneError, collect
from instructune.metrics import TEMPLATE_METRICS  # a template may name the metrics that exist
from instructune.types import JSON

TASKS = ("classification", "generation", "summarization", "qa", "extraction", "translation")
DEFAULT_METRICS = {"classification": ["accuracy", "f1"], "qa": ["exact_match", "f1"]}
STOPS = ("newline", "eos")
CONTEXT_NAMES = {"choices", "answer"}  # what a body sees besides the row's own fields


class RowError(InstructuneError):
    """One row cannot be rendered. `kind` groups such errors when `--skip-bad` counts them."""

    def __init__(self, message: str, kind: str) -> None:
        super().__init__(message)
        self.kind = kind


@dataclass
class Template:
    """One way to turn a row into an instruction example."""

    id: str
    task: str
    prompt: str
    completion: str
    choices: dict[str, str] | None
    """label -> answer text, classification only."""
    metrics: list[str]
    stop: str = "newline"
    """Where generation should stop: 'newline' (one-line answers) or 'eos'."""
    pack: str | None = None
    description: str = ""
    label_field: str = "label"
    """Classification: the row field whose value is a key of `choices`."""
    format: str = "template"
    """'template' renders `prompt` and `completion`; a data format (alpaca, messages, sharegpt, text) reads
    its records as they are (`data.formats`)."""

    def fields(self) -> list[str]:
        """Row fields the prompt and completion use (plus the label field for classification)."""
        used = set(variables(self.prompt) | variables(self.completion))
        if self.task == "classification":
            used.add(self.label_field)
        return sorted(used - CONTEXT_NAMES)

    def label_hint(self) -> str:
        """Where a classification template reads its label, and how to point it at another column."""
        if self.task != "classification":
            return ""
        return (f"; the label is read from field '{self.label_field}', the template's `label_field`: if your "
                f"labels are in another column, set `label_field: COLUMN` in template '{self.id}'")

    def label_of(self, row: dict) -> str | None:
        """The row's class label as a string (keys of `choices` are strings), or None."""
        if self.task != "classification" or row.get(self.label_field) is None:
            return None
        return str(row[self.label_field])

    def render(self, row: dict) -> tuple[str, str]:
        """(prompt, completion) for one row; a RowError names the field and the fields present."""
        for what, bad in (("missing", [f for f in self.fields() if f not in row]),
                          ("null", [f for f in self.fields() if f in row and row[f] is None])):
            if bad:  # a null would render as the word "None": as wrong as a missing field
                names = ", ".join(f"'{f}'" for f in bad)
                raise RowError(f"field{'s' * (len(bad) > 1)} {names} used by template '{self.id}' "
                               f"{'are' if len(bad) > 1 else 'is'} {what}; fields present: {', '.join(row)}"
                               f"{self.label_hint() if self.label_field in bad else ''}",
                               kind=f"{what} field {names} (template {self.id})")
        context = {**row, "choices": self.choices or {}}
        if self.task == "classification":
            label = self.label_of(row)
            if label not in (self.choices or {}):
                raise RowError(
                    f"label {row.get(self.label_field)!r} (field '{self.label_field}') is not one of the answer "
                    f"choices of template '{self.id}': {', '.join(self.choices or {})}; fix the row, or add the "
                    "label to `choices` in the template file",
                    kind=f"label outside the choices (template {self.id})")
            context["answer"] = self.choices[label]  # type: ignore[index]
        try:
            prompt = sandbox.render(_compile(self.prompt), context).strip()
            completion = sandbox.render(_compile(self.completion), context).strip()
            (prompt + completion).encode("utf-8")  # a '\ud800' literal renders text no file can hold
        except sandbox.TemplateLimitError as e:  # the template's doing, not the row's: no row would fare better
            raise InstructuneError(f"template '{self.id}' asks for more than templates may: {e}. Rewrite that part "
                                   "of the template (the limits are in instructune.data.sandbox).") from None
        except Exception as e:  # the body is user code: jinja errors, 1/0, too big a range, endless recursion ...
            reason = str(e) or type(e).__name__  # MemoryError() and RecursionError can be wordless
            raise RowError(f"template '{self.id}' fails on this row: {reason}; fields present: {', '.join(row)}",
                           kind=f"template error (template {self.id})") from None
        if not completion:
            raise RowError(f"template '{self.id}' renders an empty completion; check the row's "
                           f"{', '.join(self.fields())}", kind=f"empty completion (template {self.id})")
        if self.stop == "newline" and "\n" in completion:
            raise RowError(f"the completion of template '{self.id}' spans several lines but its stop is "
                           "'newline' (generation would end after the first line); set `stop: eos` or make "
                           "the completion one line", kind=f"multi-line completion (template {self.id})")
        return prompt, completion

    def to_dict(self) -> JSON:
        """Everything that defines the template (hashed into dataset cache keys)."""
        out = dataclasses.asdict(self)
        if self.format == "template":
            del out["format"]  # templated datasets keep the cache keys they had before formats existed
        return out


def check_fields(templates: list[Template], rows: list[dict], source: str) -> None:
    """Refuse, once, a field that templates use and no row has: a column the source names otherwise
    (labels in a `sentiment` column, say), which would fail every row alike. A field only some rows
    lack stays a per-row error (`Template.render`, which `--skip-bad` can count)."""
    present = dict.fromkeys(k for row in rows for k in row)  # in the source's order (a CSV's header)
    problems = []
    for t in templates:
        if t.format != "template":
            continue
        absent = [f for f in t.fields() if f not in present]
        if absent:
            names = ", ".join(f"'{f}'" for f in absent)
            problems.append(f"field{'s' * (len(absent) > 1)} {names} used by template '{t.id}' "
                            f"{'are' if len(absent) > 1 else 'is'} in no row; fields present: "
                            f"{', '.join(present)}{t.label_hint() if t.label_field in absent else ''}")
    collect(problems, f"{source} lacks fields its templates use")


# --- Jinja environment: sandboxed, strict, with a few text filters -------------------------------

def truncate_words(text: str, n: int = 200, end: str = " ...") -> str:
    """The first `n` words of `text`, keeping its line breaks; `end` marks a cut."""
    words = list(re.finditer(r"\S+", str(text)))
    return str(text) if len(words) <= n else str(text)[: words[n - 1].end()] + end


_ABBREV = re.compile(r"\b(?:[A-Z]|Mr|Mrs|Ms|Dr|St|Sen|Rep|Gov|Gen|Jan|Feb|Aug|Sept?|Oct|Nov|Dec|No|vs|U\.S|U\.K)\.$")


def _sentence_end(text: str) -> int:
    """Where the first sentence of `text` ends: at . ! or ? before a capital, not after an abbreviation."""
    for m in re.finditer(r"[.!?][\"')\u201d]?(?=\s+[\"'(\u201c]?[A-Z0-9])", text):
        if not _ABBREV.search(text[: m.end()]):
            return m.end()
    return len(text)


def first_sentence(text: str, max_words: int = 60) -> str:
    """The first sentence of `text` on one line, at most `max_words` words (a news article's lead)."""
    text = str(text)
    return truncate_words(" ".join(text[: _sentence_end(text)].split()), max_words, end="")


def drop_first_sentence(text: str) -> str:
    """`text` without its first sentence: the article a lead sentence is summarised from."""
    text = str(text)
    return text[_sentence_end(text):].strip()


def or_list(values: Iterable[object], conjunction: str = "or") -> str:
    """['a', 'b', 'c'] -> 'a, b or c': choice lists in prompts."""
    items = [str(v) for v in values]
    return items[0] if len(items) == 1 else f"{', '.join(items[:-1])} {conjunction} {items[-1]}"


ENV = sandbox.environment()
ENV.filters.update(truncate_words=truncate_words, first_sentence=first_sentence,
                   drop_first_sentence=drop_first_sentence, or_list=or_list)


@lru_cache(maxsize=512)
def _compile(text: str) -> jinja2.Template:
    return ENV.from_string(text)


@lru_cache(maxsize=512)
def variables(text: str) -> frozenset[str]:
    """Names a Jinja body uses that it does not define itself (row fields, `choices`, `answer`)."""
    return frozenset(meta.find_undeclared_variables(ENV.parse(text)))


# --- Loading --------------------------------------------------------------------------------------

FIELDS = {f.name for f in dataclasses.fields(Template)}


def builtin_file(pack: str) -> Path | None:
    """The template file shipped for a pack, if there is one."""
    path = resources.files("instructune") / "templates" / f"{pack}.yaml"
    return Path(str(path)) if path.is_file() else None


def load_templates(source: str) -> dict[str, Template]:
    """Templates by id, from a built-in pack's file (`rotten-tomatoes`) or a user YAML file."""
    path = builtin_file(source) if source in PACKS else None
    if path is None:
        path = Path(source).expanduser()
        if not path.is_file():
            raise InstructuneError(
                f"template source '{source}' is neither a data pack ({', '.join(PACKS)}) nor an existing YAML "
                "file; check the path, or run `instructune templates list`.")
    return parse_templates(path, default_pack=source if source in PACKS else None)


def parse_templates(path: Path, default_pack: str | None = None) -> dict[str, Template]:
    """Parse and check every template in a YAML file, reporting all problems at once."""
    data = load_yaml_file(path, "a template file is a list of templates with a few keys each")
    pack = default_pack
    if isinstance(data, dict):
        pack = data.get("pack", pack)
        data = data.get("templates")
    if not isinstance(data, list) or not data:
        raise InstructuneError(f"{path}: expected a list of templates (or `templates: [...]`), each with id, "
                               "task, prompt and completion; see src/instructune/templates/ for examples.")
    problems: list[str] = []
    out: dict[str, Template] = {}
    for i, entry in enumerate(data):
        template = _template(entry, f"{path}: template {i + 1}", path, pack, problems)
        if template is None:
            continue
        if template.id in out:
            problems.append(f"{path}: template id '{template.id}' is used twice; ids must be unique")
        out[template.id] = template
    collect(problems, f"{path}: invalid templates")
    return out


def _template(entry: object, where: str, path: Path, pack: str | None, problems: list[str]) -> Template | None:
    """Build one Template from its YAML mapping, appending problems instead of raising."""
    if not isinstance(entry, dict) or not entry.get("id"):
        problems.append(f"{where}: each template is a mapping with at least `id`, `task` and `prompt`")
        return None
    tid = str(entry["id"])
    where = f"{path}: template '{tid}'"
    before = len(problems)
    for key in entry:
        if key not in FIELDS:
            close = difflib.get_close_matches(str(key), FIELDS, n=1)
            problems.append(f"{where}: unknown key '{key}'" + (f"; did you mean '{close[0]}'?" if close else
                                                                 f"; known keys: {', '.join(sorted(FIELDS))}"))
    task = entry.get("task")
    if task not in TASKS:
        problems.append(f"{where}: task {task!r} is not one of {', '.join(TASKS)}")
    choices = entry.get("choices")
    if task == "classification":
        choices = _choices(choices, where, problems)
    elif choices is not None:
        problems.append(f"{where}: `choices` only applies to task classification")
    completion = entry.get("completion", "{{ answer }}" if task == "classification" else None)
    for part, text in (("prompt", entry.get("prompt")), ("completion", completion)):
        if not isinstance(text, str) or not text.strip():
            problems.append(f"{where}: `{part}` is missing or empty")
            continue
        try:
            if used := sorted(variables(text) & sandbox.REMOVED):
                problems.append(f"{where}: the {part} uses {', '.join(used)}, which templates may not use "
                                "(filler text without bound); remove it")
        except RecursionError:
            problems.append(f"{where}: the {part} does not parse as Jinja (nested too deeply); simplify it")
        except jinja2.TemplateSyntaxError as e:
            reason = (e.message or "syntax error").rstrip(".")
            problems.append(f"{where}: the {part} does not parse as Jinja ({reason}, line {e.lineno} of the {part}); "
                            "fix it there")
    metrics = entry.get("metrics", DEFAULT_METRICS.get(str(task), ["rouge", "bleu"]))
    if not isinstance(metrics, list) or any(not isinstance(m, str) or m not in TEMPLATE_METRICS for m in metrics):
        problems.append(f"{where}: metrics {metrics!r} must be a list drawn from {', '.join(TEMPLATE_METRICS)}")
    stop = entry.get("stop", "newline")
    if stop not in STOPS:
        problems.append(f"{where}: stop {stop!r} must be 'newline' (one-line answers) or 'eos'")
    if len(problems) > before:
        return None
    return Template(id=tid, task=task, prompt=entry["prompt"], completion=completion, choices=choices,
                    metrics=list(metrics), stop=stop, pack=entry.get("pack", pack),
                    description=str(entry.get("description", "")).strip(),
                    label_field=str(entry.get("label_field", "label")))


def _choices(choices: object, where: str, problems: list[str]) -> dict[str, str] | None:
    """Classification answers: a non-empty mapping label -> distinct one-line answer text."""
    if not isinstance(choices, dict) or not choices:
        problems.append(f"{where}: a classification template needs `choices`, a mapping label -> answer "
                        "(e.g. {fresh: positive, rotten: negative})")
        return None
    out = {str(k): str(v).strip() for k, v in choices.items()}
    if any(not v or "\n" in v for v in out.values()):
        problems.append(f"{where}: every answer in `choices` must be non-empty, one line")
    if len(set(out.values())) < len(out):
        problems.append(f"{where}: two labels share one answer in `choices`; answers must be distinct")
    return out


def get_template(source: str, template_id: str) -> Template:
    """One template by id; an unknown id lists the ids that exist."""
    templates = load_templates(source)
    if template_id not in templates:
        raise InstructuneError(f"template '{template_id}' is not in {source}; templates there: "
                               f"{', '.join(templates)} (`instructune templates list`).")
    return templates[template_id]
