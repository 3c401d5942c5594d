"""attention()'s signature is written once (`runtime.inputs.prepare`); every other spelling of it
is held to that one here: the Python hot path, the plan builder, and the compiled hit path."""

from __future__ import annotations

import inspect
import re
from pathlib import Path

from fa4doctor.runtime import dispatcher, inputs, native

HIT_CPP = Path(native.__file__).with_name("hit.cpp").read_text()


def _parameters(func) -> list[tuple[str, object, object]]:
    return [(p.name, p.kind, p.default) for p in inspect.signature(func).parameters.values()]


def test_attention_takes_exactly_prepares_parameters():
    assert _parameters(dispatcher.python_attention) == _parameters(inputs.prepare)


def test_keywords_are_prepares_keyword_parameters_in_order():
    keyword_only = [n for n, kind, _ in _parameters(inputs.prepare) if kind is inspect.Parameter.KEYWORD_ONLY]
    assert list(inputs.KEYWORDS) == keyword_only


def test_the_hot_path_passes_every_keyword_to_the_plan_builder_in_order():
    source = inspect.getsource(dispatcher.python_attention)
    call = re.search(r"_first_call\(key, q, k, v, (.*?)\)\n", source, re.S).group(1)
    assert [a.strip() for a in call.split(",")] == list(inputs.KEYWORDS)


def test_the_compiled_hit_path_names_the_same_keywords():
    names = re.search(r"kKwNames\[kNumKw\] = \{(.*?)\};", HIT_CPP, re.S).group(1)
    assert re.findall(r'"(\w+)"', names) == list(inputs.KEYWORDS)
    enum = re.search(r"enum Kw \{(.*?)\};", HIT_CPP, re.S).group(1)
    assert len([e for e in enum.replace("\n", "").split(",") if e.strip()]) == len(inputs.KEYWORDS) + 1


def test_the_keyed_keywords_are_the_compiled_paths_in_its_order():
    keyed = re.search(r"constexpr int kKeyed\[\] = \{(.*?)\};", HIT_CPP).group(1)
    enum = [e.strip() for e in re.search(r"enum Kw \{(.*?)\};", HIT_CPP, re.S).group(1).split(",")]
    by_enum = dict(zip(enum, inputs.KEYWORDS))
    assert tuple(by_enum[e.strip()] for e in keyed.split(",")) == native.KEYED
