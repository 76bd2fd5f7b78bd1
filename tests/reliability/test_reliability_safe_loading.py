"""Safe loading: no pickle code runs, no hub code runs unasked, templates stay in the sandbox, names stay in folders."""

from __future__ import annotations

import ast
import os
import pickle
import shutil
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import instructune
from instructune.adapters.registry import adapters_root, register_adapter, validate_name
from instructune.data.templates import load_templates
from instructune.errors import InstructuneError

SRC = Path(instructune.__file__).parent
UNSAFE_MODULES = {"pickle", "cPickle", "_pickle", "dill", "cloudpickle", "joblib", "marshal", "shelve"}


def unsafe_calls(source: str, name: str = "<src>") -> list[str]:
    """Every place in `source` that could run code hidden in a file: pickle imports, unsafe loaders, eval/exec."""
    found = []
    for node in ast.walk(ast.parse(source)):
        where = f"{name}:{getattr(node, 'lineno', '?')}"
        if isinstance(node, ast.Import | ast.ImportFrom):
            mods = [a.name for a in node.names] if isinstance(node, ast.Import) else [node.module or ""]
            found += [f"{where} imports {m}" for m in mods if m.split(".")[0] in UNSAFE_MODULES]
        if not isinstance(node, ast.Call):
            continue
        func = ast.unparse(node.func)
        kwargs = {k.arg: k.value for k in node.keywords}
        literal = {k: v.value for k, v in kwargs.items() if isinstance(v, ast.Constant)}
        if func.endswith("torch.load") and literal.get("weights_only") is not True:
            found.append(f"{where} torch.load without weights_only=True")
        if func in ("yaml.load", "yaml.unsafe_load", "yaml.full_load", "yaml.load_all"):  # safe_load only
            found.append(f"{where} {func}")
        if func in ("eval", "exec"):
            found.append(f"{where} {func}()")
        if literal.get("trust_remote_code") is True or literal.get("allow_pickle") is True:
            found.append(f"{where} {func} with a literal True for trust_remote_code/allow_pickle")
        if func.endswith("from_pretrained") and literal.get("use_safetensors") is False:
            found.append(f"{where} from_pretrained(use_safetensors=False)")
    return found


def test_scanner_flags_unsafe_code() -> None:
    bad = ("import pickle\nfrom joblib import load\nimport torch\ntorch.load('x')\ntorch.load('x', weights_only=False)\n"
           "yaml.load(s)\neval('1')\nM.from_pretrained(p, trust_remote_code=True)\nnp.load(f, allow_pickle=True)\n")
    assert len(unsafe_calls(bad)) == 8
    assert unsafe_calls("import torch\ntorch.load('x', weights_only=True)\nyaml.safe_load(s)\n") == []


def test_source_tree_loads_nothing_unsafely() -> None:
    files = sorted(SRC.rglob("*.py"))
    assert len(files) > 20  # the whole package was scanned
    found = [hit for f in files for hit in unsafe_calls(f.read_text(encoding="utf-8"), str(f.relative_to(SRC)))]
    assert found == []


class Payload:
    """Unpickling this runs `touch MARKER`: what a malicious .bin / .pt file does."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple:
        return os.system, (f"touch {self.marker}",)


def test_trojan_weights_never_run(tmp_path: Path, tiny_model_dir: Path) -> None:
    """A model folder whose only weights are a pickle with a payload: loading fails, the payload never runs."""
    from instructune.models import load_model

    folder, marker = tmp_path / "trojan", tmp_path / "pwned"
    shutil.copytree(tiny_model_dir, folder)
    (folder / "model.safetensors").unlink()
    (folder / "pytorch_model.bin").write_bytes(pickle.dumps({"model.embed_tokens.weight": Payload(marker)}))
    with pytest.raises(Exception):  # noqa: B017 (any refusal will do; what matters is the payload)
        load_model(str(folder))
    assert not marker.exists()


def test_remote_code_is_off_unless_asked(monkeypatch: pytest.MonkeyPatch, tiny_model_dir: Path) -> None:
    import transformers

    from instructune.models import load_model

    seen: list[tuple[str, object]] = []
    for cls in (transformers.AutoModelForCausalLM, transformers.AutoTokenizer):
        real = cls.from_pretrained.__func__

        def record(klass, *args, _real=real, _name=cls.__name__, **kwargs):  # noqa: ANN001, ANN202
            seen.append((_name, kwargs.get("trust_remote_code", "absent")))
            return _real(klass, *args, **kwargs)
        monkeypatch.setattr(cls, "from_pretrained", classmethod(record))
    load_model(str(tiny_model_dir))
    assert sorted(seen) == [("AutoModelForCausalLM", False), ("AutoTokenizer", False)]
    seen.clear()
    load_model(str(tiny_model_dir), trust_remote_code=True)  # only the explicit flag turns it on
    assert sorted(seen) == [("AutoModelForCausalLM", True), ("AutoTokenizer", True)]


def test_only_an_explicit_cli_flag_enables_remote_code() -> None:
    """Every call that passes trust_remote_code in src passes False or the user's flag, never a literal True."""
    passing = []
    for f in sorted(SRC.rglob("*.py")):
        for node in ast.walk(ast.parse(f.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Call):
                passing += [(f.name, ast.unparse(k.value)) for k in node.keywords if k.arg == "trust_remote_code"]
    assert passing and all(v in ("False", "trust_remote_code", "args.trust_remote_code") for _, v in passing), passing


# --- templates: the Jinja sandbox ----------------------------------------------------------------

ESCAPES = [
    "{{ ''.__class__.__mro__[1].__subclasses__() }}",
    "{{ ''.__class__.__mro__[-1].__subclasses__() }}",
    "{{ cycler.__init__.__globals__.os.popen('touch MARKER').read() }}",
    "{{ joiner.__init__.__globals__.os.popen('touch MARKER').read() }}",
    "{{ namespace.__init__.__globals__.os.popen('touch MARKER').read() }}",
    "{{ lipsum.__globals__['os'].popen('touch MARKER').read() }}",
    "{{ lipsum.__globals__ }}",
    "{{ range.__globals__ }}",
    "{{ self._TemplateReference__context }}",
    "{{ self.__init__.__globals__ }}",
    "{{ config.items() }}",
    "{{ request.application.__globals__.__builtins__.__import__('os').popen('touch MARKER').read() }}",
    "{% for c in [].__class__.__base__.__subclasses__() %}{% if c.__name__ == 'Popen' %}"
    "{{ c('touch MARKER', shell=True) }}{% endif %}{% endfor %}",
    "{{ text.__class__.__base__.__subclasses__() }}",
    "{{ text|attr('__class__') }}",
    "{{ (text|attr('__class__')|attr('__mro__'))[1] }}",
    "{{ dict.mro() }}",
    "{{ dict.__subclasses__() }}",
    "{{ choices.__class__.__init__.__globals__ }}",
    "{{ __builtins__ }}",
    "{{ '{0.__class__.__mro__}'.format(text) }}",
    "{{ '{0.__globals__}'.format(lipsum) }}",
    "{{ '{x.__class__}'.format_map({'x': text}) }}",
    "{{ '%s'|format(text.__class__) }}",
    "{{ open('/etc/passwd').read() }}",
    "{% include '/etc/passwd' %}",
    "{% import 'os' as os %}{{ os.system('touch MARKER') }}",
    "{% extends '/etc/passwd' %}",
    "{% set x = choices.update({'a': 1}) %}{{ x }}",
    "{% set l = [1] %}{{ l.append(2) }}{{ l }}",
    "{{ range(10**9)|list }}",
    "{% macro f() %}{{ f() }}{% endmacro %}{{ f() }}",
    "{{ 1/0 }}",
    "{{ (text|attr('__init__')|attr('__globals__')) }}",
    "{{ '\\ud800' }}",
]


def render_payload(folder: Path, payload: str) -> str:
    tpl = folder / "t.yaml"
    tpl.write_text("templates:\n  - id: x\n    task: generation\n    stop: eos\n"
                   f"    prompt: {payload.replace('MARKER', str(folder / 'pwned'))!r}\n"
                   "    completion: '{{ text }}'\n", encoding="utf-8")
    return load_templates(str(tpl))["x"].render({"text": "hello", "label": "x"})[0]


@pytest.mark.parametrize("payload", ESCAPES)
def test_template_cannot_escape_the_sandbox(tmp_path: Path, payload: str) -> None:
    """Each attempt is refused with the project's error naming the template; none runs its command."""
    with pytest.raises(InstructuneError, match="template 'x'"):
        render_payload(tmp_path, payload)
    assert not (tmp_path / "pwned").exists()


def test_template_sandbox_still_renders_ordinary_bodies(tmp_path: Path) -> None:
    out = render_payload(tmp_path, "{{ text|upper }} {{ range(3)|list }} {{ '{0}!'.format(text) }}")
    assert out == "HELLO [0, 1, 2] hello!"


# --- names stay in their folders ------------------------------------------------------------------

@pytest.mark.parametrize("name", ["..", ".", "../evil", "a/../../b", "/abs", "a/b", "a\\b", "~root", "", ".hidden",
                                  "-rf", "a\nb", "a\x00b", "x" * 65, "a..b", "C:evil", "ａｂ", "name "])
def test_bad_adapter_names_are_refused(name: str) -> None:
    with pytest.raises(InstructuneError, match="invalid adapter name"):
        validate_name(name)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.text(min_size=0, max_size=80))
def test_any_accepted_name_is_one_folder_inside_the_registry(name: str) -> None:
    root = adapters_root()
    try:
        validate_name(name)
    except InstructuneError:
        return
    path = root / name
    assert path.parent == root and name not in (".", "..") and os.path.normpath(path) == str(path)
    assert Path(os.path.realpath(path)).parent == Path(os.path.realpath(root))


def test_register_refuses_an_escaping_name_before_touching_disk(tmp_path: Path) -> None:
    with pytest.raises(InstructuneError, match="invalid adapter name"):
        register_adapter("../outside", tmp_path)
    assert not (adapters_root().parent / "outside").exists() and not adapters_root().exists()


def test_the_docs_count_the_escape_attempts_tested() -> None:
    """README.md and docs/reliability.md say how many escapes are tried: the number of ESCAPES, not a typed guess."""
    root = Path(__file__).resolve().parents[2]
    for doc in ("README.md", "docs/reliability.md"):
        assert f"{len(ESCAPES)} sandbox-escape attempts" in (root / doc).read_text(encoding="utf-8"), doc
