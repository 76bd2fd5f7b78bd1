"""Templates: rendering, the errors a bad row or a bad template file gets, the sandbox, the filters."""

from __future__ import annotations

from pathlib import Path

import pytest

from instructune.data.templates import (
    RowError,
    Template,
    check_fields,
    first_sentence,
    get_template,
    load_templates,
    or_list,
    truncate_words,
)
from instructune.errors import InstructuneError

CLASSIFY = Template(
    id="classify-1", task="classification", choices={"pos": "positive", "neg": "negative"}, metrics=["accuracy"],
    prompt="Is this review positive or negative?\n\n{{ review_body }}\n\nAnswer: {{ choices.values() | or_list }}.",
    completion="{{ answer }}")


def write(tmp_path: Path, name: str, text: str) -> str:
    path = tmp_path / name
    path.write_text(text)
    return str(path)


def test_classification_renders_answer_and_label() -> None:
    prompt, completion = CLASSIFY.render({"review_body": "Great fun.", "label": "pos"})
    assert prompt == "Is this review positive or negative?\n\nGreat fun.\n\nAnswer: positive or negative."
    assert completion == "positive"
    assert CLASSIFY.label_of({"label": "neg"}) == "neg"
    assert CLASSIFY.fields() == ["label", "review_body"]


def test_missing_field_names_field_template_and_fields_present() -> None:
    with pytest.raises(RowError) as e:
        CLASSIFY.render({"text": "Great fun.", "label": "pos"})
    assert str(e.value) == ("field 'review_body' used by template 'classify-1' is missing; "
                            "fields present: text, label")


def test_null_field_is_an_error_not_the_word_none() -> None:
    with pytest.raises(RowError, match="field 'review_body' used by template 'classify-1' is null"):
        CLASSIFY.render({"review_body": None, "label": "pos"})


def test_label_outside_choices_is_an_error() -> None:
    with pytest.raises(RowError, match=r"label 'meh' \(field 'label'\) is not one of the answer choices of "
                                       r"template 'classify-1': pos, neg"):
        CLASSIFY.render({"review_body": "So so.", "label": "meh"})


def test_integer_labels_match_string_choice_keys(tmp_path: Path) -> None:
    path = write(tmp_path, "t.yaml", "- id: c\n  task: classification\n  choices: {0: negative, 1: positive}\n"
                                     "  prompt: '{{ text }} positive or negative?'\n")
    template = load_templates(path)["c"]
    assert template.render({"text": "Good.", "label": 1}) == ("Good. positive or negative?", "positive")


def test_multiline_completion_needs_stop_eos() -> None:
    t = Template(id="gen", task="generation", prompt="Write.", completion="{{ text }}", choices=None,
                 metrics=["rouge"], stop="newline")
    with pytest.raises(RowError, match="spans several lines but its stop is 'newline'"):
        t.render({"text": "one\ntwo"})
    t.stop = "eos"
    assert t.render({"text": "one\ntwo"}) == ("Write.", "one\ntwo")


def test_sandbox_blocks_attribute_escapes() -> None:
    t = Template(id="evil", task="generation", prompt="{{ text.__class__.__mro__ }}", completion="x",
                 choices=None, metrics=["rouge"])
    with pytest.raises(RowError, match="template 'evil' fails on this row"):
        t.render({"text": "a"})


def test_template_that_does_not_parse_names_template_and_line(tmp_path: Path) -> None:
    path = write(tmp_path, "bad.yaml", "templates:\n  - id: headline-1\n    task: summarization\n"
                                       "    prompt: \"Line one\\n{{ text | truncate_words(10) }\\n\"\n"
                                       "    completion: '{{ title }}'\n")
    with pytest.raises(InstructuneError) as e:
        load_templates(path)
    msg = str(e.value)
    assert "template 'headline-1'" in msg and "does not parse as Jinja" in msg and "line 2 of the prompt" in msg


def test_template_file_problems_reported_together(tmp_path: Path) -> None:
    path = write(tmp_path, "t.yaml", "- id: a\n  task: clasification\n  prompt: x\n  completion: y\n"
                                     "- id: b\n  task: classification\n  prompt: x\n  choise: {a: b}\n"
                                     "- id: a\n  task: qa\n  prompt: x\n  completion: y\n  stop: never\n")
    with pytest.raises(InstructuneError) as e:
        load_templates(path)
    msg = str(e.value)
    assert "task 'clasification' is not one of" in msg
    assert "unknown key 'choise'; did you mean 'choices'?" in msg
    assert "needs `choices`" in msg
    assert "stop 'never' must be" in msg
    assert "4 problems" in msg


def test_unknown_template_id_lists_ids(tmp_path: Path) -> None:
    path = write(tmp_path, "t.yaml", "- {id: one, task: qa, prompt: q, completion: a}\n"
                                     "- {id: two, task: qa, prompt: q, completion: a}\n")
    with pytest.raises(InstructuneError, match=r"template 'three' is not in .*templates there: one, two"):
        get_template(path, "three")


def test_unknown_source_lists_packs() -> None:
    with pytest.raises(InstructuneError, match="neither a data pack .*rotten-tomatoes.*bbc-news"):
        load_templates("rotten-tomato")


def test_builtin_templates_load_with_three_or_more_each() -> None:
    for pack in ("rotten-tomatoes", "news-headlines", "bbc-news", "drug-reviews"):
        templates = load_templates(pack)
        assert len(templates) >= 3
        assert len({t.task for t in templates.values()}) >= 2
        assert all(t.pack == pack for t in templates.values())


def test_filters() -> None:
    assert truncate_words("a b\n\nc d e", 3) == "a b\n\nc ..."
    assert truncate_words("a b", 3) == "a b"
    assert first_sentence("Mr. Smith went to Washington. Then he left.") == "Mr. Smith went to Washington."
    assert first_sentence("The U.S. economy grew 3%. Markets rose.") == "The U.S. economy grew 3%."
    assert first_sentence("No end here") == "No end here"
    assert or_list(["a"]) == "a" and or_list(["a", "b", "c"]) == "a, b or c"


def test_a_missing_label_names_label_field_and_the_fix() -> None:
    with pytest.raises(RowError) as e:
        CLASSIFY.render({"review_body": "Great fun.", "sentiment": "pos"})
    assert str(e.value) == ("field 'label' used by template 'classify-1' is missing; fields present: review_body, "
                            "sentiment; the label is read from field 'label', the template's `label_field`: if "
                            "your labels are in another column, set `label_field: COLUMN` in template 'classify-1'")


def test_a_field_no_row_has_is_one_error_not_one_per_row() -> None:
    rows = [{"review_body": f"review {i}", "sentiment": "pos"} for i in range(50)]
    with pytest.raises(InstructuneError) as e:
        check_fields([CLASSIFY], rows, "reviews.csv")
    assert str(e.value) == (
        "reviews.csv lacks fields its templates use (1 problem):\n  - field 'label' used by template 'classify-1' "
        "is in no row; fields present: review_body, sentiment; the label is read from field 'label', the "
        "template's `label_field`: if your labels are in another column, set `label_field: COLUMN` in template "
        "'classify-1'")
    check_fields([CLASSIFY], [*rows, {"review_body": "x", "label": "pos"}], "reviews.csv")  # one row has it: fine
    relabelled = Template(**{**CLASSIFY.to_dict(), "label_field": "sentiment"})
    check_fields([relabelled], rows, "reviews.csv")
    assert relabelled.render(rows[0])[1] == "positive"
