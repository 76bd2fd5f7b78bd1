"""Conversations to tokens, rendered by the model's chat template, with exactly the answers trained.

A trained assistant turn i is what the template writes between its generation prompt and the end
of the turn:

    before_i = render(messages[:i], add_generation_prompt=True)   # ...<|im_start|>assistant\\n
    upto_i   = render(messages[:i + 1])                           # ...<|im_start|>assistant\\nHi!<|im_end|>\\n
    trained  = upto_i[len(before_i):].rstrip()                    # Hi!<|im_end|>

A token trains when it starts inside those characters. So the answer and its end-of-turn token
carry labels; system and user turns, role markers and padding get -100.

Rendering every prefix costs time quadratic in the turns, so a conversation is rendered once,
each answer between markers, and the spans are read off in one pass: what the template writes
around an answer (`head` after the generation prompt, `tail` to the end of the turn) is learnt
from a four-message probe and checked at every answer. Only the messages that can reach
`max_length` tokens are rendered (every message renders to a token or more). A template that
fails the probe or a check (some re-render earlier turns, dropping their reasoning) is rendered
turn by turn as above; when the prefixes are not prefixes of the whole, each trained turn is its
own example, exactly as the model saw the conversation at that turn.

Content is data, never control. A special-token string in a message (`<|im_start|>` written in a
user's text) is encoded as the text it is, so a message cannot forge a turn: the content that
holds one is rendered between two Unicode noncharacters, and what lies between them is encoded
with special-token matching off. The template's own markers stay the only control tokens.

A model without a chat template (a base model) takes a named one, `data.chat_format`
(`data/chat_template.py`), saved with the trained adapter or model, so inference renders the same way.
"""

from __future__ import annotations

import re
import weakref
from collections.abc import Sequence
from functools import lru_cache
from typing import Any, NamedTuple

from tokenizers import Tokenizer

from instructune.data.chat_template import FALLBACKS, require_template
from instructune.errors import InstructuneError

IGNORE_INDEX = -100

TRAIN_ON = ("all_assistant", "last_assistant")

TEXT_OPEN, TEXT_CLOSE, TURN_OPEN, TURN_CLOSE = "\ufdd0", "\ufdd1", "\ufdd2", "\ufdd3"
"""Noncharacters (never in text people exchange, and dropped from content): around content encoded as
text, and around a trained answer while its span is found."""
MARKERS = re.compile("[\ufdd0-\ufdd3]")


def render(tok: Any, messages: Sequence[dict], generation: bool = False) -> str:
    require_template(tok, getattr(tok, "name_or_path", None) or "this model")
    return tok.apply_chat_template(list(messages), tokenize=False, add_generation_prompt=generation)


def control_tokens(tok: Any) -> tuple[str, ...]:
    """The strings `tok` turns into special tokens (its special added tokens), longest first."""
    added = getattr(tok, "added_tokens_decoder", None) or {}
    names = {t.content for t in added.values() if getattr(t, "special", False)}
    names |= set(getattr(tok, "all_special_tokens", None) or ())
    return tuple(sorted((n for n in names if n.strip()), key=lambda n: (-len(n), n)))


@lru_cache(maxsize=64)
def _pattern(tokens: tuple[str, ...]) -> re.Pattern:
    return re.compile("|".join(map(re.escape, tokens)) or "(?!)")  # (?!) never matches


def _content(text: str, pattern: re.Pattern, turn: bool, each: bool) -> str:
    """Message content marked for rendering: as text where it holds a special-token string (the whole core,
    or with `each` every such string alone), between turn markers with `turn`. Leading and trailing
    whitespace stays outside the markers, so a template that trims content trims it as usual."""
    if MARKERS.search(text):
        text = MARKERS.sub("", text)  # markers sent in content could mark the template's own tokens
    core = text.strip()
    as_text = pattern.search(core) is not None
    if not core or not (as_text or turn):
        return text
    lead, trail = text[:len(text) - len(text.lstrip())], text[len(text.rstrip()):]
    if as_text:
        core = (pattern.sub(lambda m: TEXT_OPEN + m.group() + TEXT_CLOSE, core) if each
                else TEXT_OPEN + core + TEXT_CLOSE)
    return lead + (TURN_OPEN + core + TURN_CLOSE if turn else core) + trail


class Rendered(NamedTuple):
    """A rendered conversation: its text, the character spans of it encoded as text, and turn markers
    (kind, position) in reading order."""

    text: str
    as_text: list[tuple[int, int]]
    turns: list[tuple[str, int]]


def parse(marked: str) -> Rendered | None:
    """The marked text of `render_marked` without its markers; None when the template cut a text marker
    pair apart (it rewrote the content)."""
    parts, as_text, turns, last, at, opened = [], [], [], 0, 0, None
    for m in MARKERS.finditer(marked):
        parts.append(marked[last:m.start()])
        at, last = at + m.start() - last, m.end()
        kind = m.group()
        if kind in (TEXT_OPEN, TEXT_CLOSE):
            if (kind == TEXT_OPEN) != (opened is None):
                return None
            if kind == TEXT_CLOSE:
                as_text.append((opened, at))
            opened = at if kind == TEXT_OPEN else None
        else:
            turns.append((kind, at))
    parts.append(marked[last:])
    return Rendered("".join(parts), as_text, turns) if opened is None else None


def render_marked(tok: Any, messages: Sequence[dict], generation: bool = False, chat_template: str | None = None,
                  turns: frozenset[int] = frozenset()) -> Rendered:
    """The conversation rendered with content that holds a special-token string marked to be encoded as text
    (and the answers at `turns` between turn markers)."""
    pattern = _pattern(control_tokens(tok))
    for each in (False, True):  # a template that cuts content apart gets every string marked alone
        marked = [{**m, "content": _content(m["content"], pattern, i in turns, each)}
                  if isinstance(m.get("content"), str) else m for i, m in enumerate(messages)]
        found = parse(tok.apply_chat_template(marked, tokenize=False, add_generation_prompt=generation,
                                              chat_template=chat_template))
        if found is not None:
            return found
    raise InstructuneError("the chat template rewrites message content so that its special-token strings "
                           f"({', '.join(control_tokens(tok)[:4])}) cannot be kept as plain text; remove them from "
                           "the messages.")


def encode(tok: Any, rendered: Rendered, offsets: bool = True) -> tuple[list[int], list[tuple[int, int]]]:
    """Token ids and (with `offsets`) each token's character span in `rendered.text`; the `as_text` spans are
    encoded with special-token matching off, each piece as it reads in the middle of a text."""
    if not rendered.as_text:
        return _tokens(tok, rendered.text, offsets)
    bounds, at = [], 0
    for a, b in rendered.as_text:
        bounds += [(at, a, False)] if at < a else []
        bounds.append((a, b, True))
        at = b
    bounds += [(at, len(rendered.text), False)] if at < len(rendered.text) else []
    ids, spans = [], []
    for k, (a, b, as_text) in enumerate(bounds):
        piece_ids, piece_spans = _piece(tok, rendered.text[a:b], as_text, k > 0, offsets)
        ids += piece_ids
        spans += [(s + a, e + a) for s, e in piece_spans]
    return ids, spans


def encode_text(tok: Any, text: str) -> list[int]:
    """Token ids of data as text: a special-token string in it is the text it reads, never a special token."""
    return text_tokens(tok, text, offsets=False)[0]


def _piece(tok: Any, text: str, as_text: bool, inner: bool,
           offsets: bool = True) -> tuple[list[int], list[tuple[int, int]]]:
    """A piece of a rendered text; an inner piece is encoded after a newline that is then removed, so a
    SentencePiece tokenizer adds no word-start space to it (as transformers' own sanitising does)."""
    def enc(s: str) -> tuple[list[int], list[tuple[int, int]]]:
        return text_tokens(tok, s, offsets) if as_text else _tokens(tok, s, offsets)

    if inner:
        newline = enc("\n")[0]
        ids, spans = enc("\n" + text)
        if newline and ids[:len(newline)] == newline:
            return ids[len(newline):], [(max(s - 1, 0), max(e - 1, 0)) for s, e in spans[len(newline):]]
    return enc(text)


_TEXT_BACKENDS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def text_tokens(tok: Any, text: str, offsets: bool = True) -> tuple[list[int], list[tuple[int, int]]]:
    """(ids, offsets) of `text` with special-token matching off. A fast tokenizer gets a private copy of its
    backend with `encode_special_tokens` set for good: `split_special_tokens=True` would flip a flag on the
    shared backend, and a thread encoding a prompt at that moment (the server's) would lose its control
    tokens, or keep a forged one."""
    backend = getattr(tok, "backend_tokenizer", None)
    if backend is None:  # a Python tokenizer: split_special_tokens is an argument of the one call
        return _tokens(tok, text, offsets, split_special_tokens=True)
    size, twin = _TEXT_BACKENDS.get(tok, (None, None))
    if twin is None or size != len(tok):  # tokens added since: copy again
        twin = Tokenizer.from_str(backend.to_str())
        twin.encode_special_tokens = True
        twin.no_padding()
        twin.no_truncation()
        _TEXT_BACKENDS[tok] = (len(tok), twin)
    enc = twin.encode(text, add_special_tokens=False)
    return enc.ids, [tuple(o) for o in enc.offsets]


def _tokens(tok: Any, text: str, offsets: bool = True, **kwargs: Any) -> tuple[list[int], list[tuple[int, int]]]:
    try:
        enc = tok(text, add_special_tokens=False, return_offsets_mapping=offsets, **kwargs)
    except NotImplementedError:
        raise InstructuneError(f"{type(tok).__name__} cannot map tokens to characters, which finding the trained "
                               "tokens of a conversation needs; use a model with a fast (tokenizers) tokenizer."
                               ) from None
    return enc["input_ids"], [tuple(o) for o in enc["offset_mapping"]] if offsets else []


def encode_conversation(tok: Any, messages: list[dict], max_length: int,
                        train_on: str = "all_assistant") -> tuple[list[dict[str, Any]], int]:
    """(examples with input_ids and labels, examples dropped).

    An example longer than `max_length` is cut after the last trained turn that fits, never inside
    one (it is marked `cut`); when not even the first trained turn fits, it is dropped."""
    require_template(tok, getattr(tok, "name_or_path", None) or "this model")
    examples, dropped = _examples(tok, messages, max_length, train_on)
    out = []
    for ids, offsets, spans in examples:
        labels, ends = _labels(ids, offsets, spans)
        whole = len(ids)
        if whole > max_length:
            fitting = [e for e in ends if e <= max_length]
            if not fitting:
                dropped += 1
                continue
            ids, labels = ids[:max(fitting)], labels[:max(fitting)]
        if all(label == IGNORE_INDEX for label in labels):
            dropped += 1
            continue
        out.append({"input_ids": ids, "labels": labels, **({"cut": True} if len(ids) < whole else {})})
    return out, dropped


Example = tuple[list[int], list[tuple[int, int]], list[tuple[int, int]]]  # ids, their offsets, trained spans


def _examples(tok: Any, messages: list[dict], max_length: int, train_on: str) -> tuple[list[Example], int]:
    """The examples of a conversation, rendered only as far as `max_length` tokens can reach (a message renders
    to a token or more: `max_length + 3` messages at first, twice as many while they render too short); and
    the trained turns left unrendered that would each have been an example too long to keep."""
    answers = [i for i, m in enumerate(messages) if m["role"] == "assistant"]
    answers = answers[-1:] if train_on == "last_assistant" else answers
    k = min(len(messages), max_length + 3)
    while True:
        part, plain = messages[:k], render_marked(tok, messages[:k])
        ids, offsets = encode(tok, plain)
        if k == len(messages) or len(ids) > max_length:
            break
        k = min(len(messages), 2 * k)
    turns = [i for i in answers if i < k]
    shape = _shape(tok, part[0]["role"] == "system")
    spans = _spans(render_marked(tok, part, turns=frozenset(turns)), plain, part, turns, shape) if shape else None
    if spans is not None:
        return [(ids, offsets, spans)], 0
    examples, per_turn = _turn_by_turn(tok, part, turns)
    return examples, len(answers) - len(turns) if per_turn else 0


def _spans(marked: Rendered, plain: Rendered, messages: list[dict], turns: list[int],
           shape: tuple[str, str]) -> list[tuple[int, int]] | None:
    """The trained span of each answer at `turns`, read off one rendering: `head` before the answer, `tail`
    after it (each answer's own leading or trailing whitespace between, unless the template trims it). None
    when the template does not render that way: the markers moved the text, or an answer is not framed so."""
    kinds = [kind for kind, _ in marked.turns]
    if marked.text != plain.text or kinds != [TURN_OPEN, TURN_CLOSE] * len(turns):
        return None
    text, (head, tail), spans = marked.text, shape, []
    for n, i in enumerate(turns):
        a, b = marked.turns[2 * n][1], marked.turns[2 * n + 1][1]
        content = MARKERS.sub("", messages[i]["content"])
        lead, trail = content[:len(content) - len(content.lstrip())], content[len(content.rstrip()):]
        lead = next((x for x in (lead, "") if text.endswith(head + x, 0, a)), None)
        trail = next((x for x in (trail, "") if text.startswith(x + tail, b)), None)
        if lead is None or trail is None:
            return None
        start, end = a - len(lead) - len(head), b + len(trail) + len(tail)
        spans.append((start, start + len(text[start:end].rstrip())))
    return spans


_SHAPES: dict[tuple, tuple[str, str] | None] = {}


def _shape(tok: Any, system: bool) -> tuple[str, str] | None:
    """(head, tail) of an answer under the tokenizer's template, from a probe conversation of two exchanges:
    what it writes after the generation prompt before the answer, and after the answer to the end of the turn
    (trailing whitespace aside). None when the probe's prefixes are not prefixes of the whole, or the spans
    read off one rendering are not those of rendering turn by turn."""
    key = (str(tok.chat_template), system, repr(sorted(tok.special_tokens_map.items(), key=str)))
    if key not in _SHAPES:
        if len(_SHAPES) > 64:
            _SHAPES.clear()
        _SHAPES[key] = _probe(tok, system)
    return _SHAPES[key]


def _probe(tok: Any, system: bool) -> tuple[str, str] | None:
    s = int(system)
    probe = [{"role": "system", "content": "Be brief."}] * s + [
        {"role": role, "content": f"{role} {n}."} for n in (1, 2) for role in ("user", "assistant")]
    try:
        before = [render_marked(tok, probe[:i], generation=True).text for i in (s + 1, s + 3)]
        upto = [render_marked(tok, probe[:i]).text for i in (s + 2, s + 4)]
        whole = render_marked(tok, probe, turns=frozenset({s + 1, s + 3}))
        first = render_marked(tok, probe[:s + 2], turns=frozenset({s + 1}))
    except Exception:  # a template that refuses the probe (wants tools, say) is rendered turn by turn
        return None
    if not (first.text == upto[0] and len(first.turns) == 2 and all(
            b.startswith(a) for a, b in zip([before[0], upto[0], before[1]], [upto[0], before[1], upto[1]]))):
        return None
    (_, a), (_, b) = first.turns
    shape = upto[0][len(before[0]):a], upto[0][b:].rstrip()
    expected = [(len(x), len(y.rstrip())) for x, y in zip(before, upto, strict=True)]
    plain = render_marked(tok, probe)
    return shape if _spans(whole, plain, probe, [s + 1, s + 3], shape) == expected else None


def _turn_by_turn(tok: Any, messages: list[dict], turns: list[int]) -> tuple[list[Example], bool]:
    """The spans by rendering the conversation up to each trained turn, with and without its answer: one
    example when each is a prefix of the whole, else one per turn (templates that re-render earlier turns;
    then True)."""
    pieces = []
    for i in turns:
        before, upto = render_marked(tok, messages[:i], generation=True), render_marked(tok, messages[:i + 1])
        if not upto.text.startswith(before.text):
            raise InstructuneError(
                "the chat template renders an assistant turn differently from its own generation prompt, so the "
                f"answer's tokens cannot be found (prompt ends {before.text[-40:]!r}, turn starts "
                f"{upto.text[len(before.text) - 40:len(before.text)]!r}); set `data.chat_format` to one of "
                f"{', '.join(FALLBACKS)}.")
        pieces.append((upto, (len(before.text), len(upto.text.rstrip()))))
    whole = render_marked(tok, messages)
    if all(whole.text.startswith(upto.text) for upto, _ in pieces):
        return [(*encode(tok, whole), [span for _, span in pieces])], False
    return [(*encode(tok, upto), [span]) for upto, span in pieces], True  # each turn as it was seen


def _labels(ids: list[int], offsets: list[tuple[int, int]],
            spans: list[tuple[int, int]]) -> tuple[list[int], list[int]]:
    """Labels (a token's own id when it starts inside a span, else -100) and, per span with tokens, the index
    after its last token; one pass over tokens and spans, both in order."""
    labels, ends, j = [IGNORE_INDEX] * len(ids), [], 0
    for k, (start, _) in enumerate(offsets):
        while j < len(spans) and start >= spans[j][1]:
            j += 1
        if j == len(spans):
            break
        if start >= spans[j][0]:
            labels[k] = ids[k]
            if ends and ends[-1][0] == j:
                ends[-1] = (j, k + 1)
            else:
                ends.append((j, k + 1))
    return labels, [e for _, e in ends]


def generation_prompt(tok: Any, messages: list[dict], exemplars: Sequence[list[dict]] = (),
                      chat_template: str | None = None) -> str:
    """The conversation up to its last assistant turn, ready for the answer; exemplar conversations
    (few-shot) come first as earlier turns, after the system message."""
    system = messages[:1] if messages[0]["role"] == "system" else []
    shots = [m for conv in exemplars for m in conv if m["role"] != "system"]
    return tok.apply_chat_template([*system, *shots, *messages[len(system):-1]], tokenize=False,
                                   add_generation_prompt=True, chat_template=chat_template)
