"""The TOML table reader (orchestrator/tables.py): each getter's type, default, range and choice
checks, unknown keys, nested tables, and a dialect's own words: exact one-line errors."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import pytest

from orchestrator.errors import ConfigError, ImageError, OrchestratorError
from orchestrator.tables import REQUIRED, Dialect, Table, Words

PLAIN = Dialect()


def _table(data: Any, dialect: Dialect = PLAIN, where: str = "t", **kw: Any) -> Table:
    return Table(data, "f.toml", dialect, where, **kw)


def _line(call: Any, error: type[OrchestratorError] = ConfigError) -> str:
    with pytest.raises(error) as caught:
        call()
    assert type(caught.value) is error
    return caught.value.one_line()


def test_a_table_checks_its_type_and_its_keys_when_made() -> None:
    assert _line(lambda: _table([1])) == "f.toml: t must be a table (write it as [t])"
    assert _line(lambda: _table({"b": 1, "a": 1, "z": 1}, keys={"a", "c"})) == (
        "f.toml: t.b is not a known key (known keys here: a, c)"
    )
    assert _line(lambda: Table({"x": 1}, "f.toml", PLAIN, keys={"y"})) == (
        "f.toml: x is not a known key (known keys here: y)"
    )
    assert _table({"anything": 1}).data == {"anything": 1}  # keys=None: any key
    assert _line(
        lambda: _table(3, where="nodes[2]", not_table=Words("{source}: {key} no", "fix {name}"))
    ) == ("f.toml: nodes[2] no (fix nodes[2])")
    assert _line(
        lambda: Table(3, "f.toml", PLAIN, "a.b.c", not_table=Words("{key}", "{name}"))
    ) == ("a.b.c (c)")


def test_known_checks_the_keys_later_in_its_own_words() -> None:
    t = _table({"a": 1, "q": 2})
    t.known({"a", "q"})
    assert _line(lambda: t.known({"a"}, Words("{source}: {key} odd", "only {known}"))) == (
        "f.toml: t.q odd (only a)"
    )


def test_nested_tables_name_their_dotted_path_and_an_absent_one_is_empty() -> None:
    top = Table({"a": {"b": {"c": "x"}}, "s": 1}, "f.toml", PLAIN)
    inner = top.table("a").table("b", {"c"})
    assert (inner.where, inner.path("c"), inner.string("c")) == ("a.b", "a.b.c", "x")
    assert top.table("none", {"k"}).data == {}
    assert _line(lambda: top.table("s")) == "f.toml: s must be a table (write it as [s])"
    assert _line(lambda: top.table("none", required=True)) == (
        "f.toml: none must be a table (write it as [none])"
    )
    assert _line(lambda: top.table("a").table("b", {"d"})) == (
        "f.toml: a.b.c is not a known key (known keys here: d)"
    )
    assert _line(lambda: top.table("s", not_table=Words("{source}: [{key}] no", "x"))) == (
        "f.toml: [s] no (x)"
    )


def test_string_is_stripped_defaults_may_be_none_or_required() -> None:
    t = _table({"s": "  v  ", "n": 3, "b": " ", "e": ""})
    assert t.string("s") == "v"
    assert t.string("absent") is None
    assert t.string("absent", "d") == "d"
    assert t.string("absent", " d ") == "d"  # a default is checked (and stripped) like a value
    assert (
        _line(lambda: t.string("absent", REQUIRED))
        == 'f.toml: t.absent is missing (add absent = "...")'
    )
    assert _line(lambda: t.string("absent", 5)) == (
        'f.toml: t.absent must be a non-empty string, got 5 (e.g. absent = "...")'
    )
    for key, shown in (("n", "3"), ("b", "' '"), ("e", "''")):
        assert _line(lambda key=key: t.string(key)) == (
            f'f.toml: t.{key} must be a non-empty string, got {shown} (e.g. {key} = "...")'
        )


def test_a_string_or_a_list_item_with_a_control_character_is_refused() -> None:
    t = _table({"s": "a\nb", "l": ["ok", "x\ty"]})
    assert _line(lambda: t.string("s")) == (
        "f.toml: t.s holds the control character '\\n' in 'a\\nb' (write it on one line, "
        "without newlines, tabs or other control characters)"
    )
    assert _line(lambda: t.strings("l")) == (
        "f.toml: t.l holds the control character '\\t' in 'x\\ty' (write it on one line, "
        "without newlines, tabs or other control characters)"
    )


def test_string_choices_name_the_choices_and_the_default() -> None:
    t = _table({"mode": " fast ", "bad": "slow "})
    assert t.string("mode", "safe", choices=("safe", "fast")) == "fast"
    assert t.string("absent", "safe", choices=("safe", "fast")) == "safe"
    assert _line(lambda: t.string("bad", "safe", choices=("fast", "safe"))) == (
        "f.toml: t.bad must be one of fast, safe, got 'slow' (e.g. bad = \"safe\")"
    )
    assert _line(lambda: t.string("bad", choices=("a", "b"))) == (
        "f.toml: t.bad must be one of a, b, got 'slow' (e.g. bad = \"a\")"
    )


def test_integer_range_includes_its_bounds_and_refuses_bools_floats_strings() -> None:
    t = _table({"lo": 1, "hi": 10, "t": True, "f": 2.0, "s": "3", "under": 0, "over": 11})
    assert (t.integer("lo", 5, low=1, high=10), t.integer("hi", 5, low=1, high=10)) == (1, 10)
    assert t.integer("absent", 5, low=1, high=10) == 5
    for key, shown in (
        ("t", "True"),
        ("f", "2.0"),
        ("s", "the string '3'"),
        ("under", "0"),
        ("over", "11"),
    ):
        assert _line(lambda key=key: t.integer(key, 5, low=1, high=10)) == (
            f"f.toml: t.{key} must be an integer between 1 and 10, got {shown} (e.g. {key} = 5)"
        )
    assert _line(lambda: t.integer("over", 5, low=1, high=10, example=7)) == (
        "f.toml: t.over must be an integer between 1 and 10, got 11 (e.g. over = 7)"
    )


def test_number_is_positive_and_a_float() -> None:
    t = _table({"i": 2, "f": 0.25, "zero": 0, "neg": -1.5, "t": True, "s": "1m"})
    assert (t.number("i", 1.0), t.number("f", 1.0), t.number("absent", 10.0)) == (2.0, 0.25, 10.0)
    assert isinstance(t.number("i", 1.0), float)
    for key, shown in (("zero", "0"), ("neg", "-1.5"), ("t", "True"), ("s", "the string '1m'")):
        assert _line(lambda key=key: t.number(key, 10.0)) == (
            f"f.toml: t.{key} must be a positive number, got {shown} (e.g. {key} = 10.0)"
        )
    assert _line(lambda: t.number("zero", 10.0, example=2.5)) == (
        "f.toml: t.zero must be a positive number, got 0 (e.g. zero = 2.5)"
    )


def test_boolean_refuses_anything_but_true_and_false() -> None:
    t = _table({"y": True, "n": False, "s": "yes", "i": 1})
    assert (t.boolean("y", False), t.boolean("n", True), t.boolean("absent", True)) == (
        True,
        False,
        True,
    )
    assert _line(lambda: t.boolean("s", False)) == (
        "f.toml: t.s must be true or false, got the string 'yes' (e.g. s = false)"
    )
    assert _line(lambda: t.boolean("i", True)) == (
        "f.toml: t.i must be true or false, got 1 (e.g. i = true)"
    )
    assert _line(lambda: t.boolean("i", False, example=True)) == (
        "f.toml: t.i must be true or false, got 1 (e.g. i = true)"
    )


def test_strings_as_the_plain_dialect_allows_them() -> None:
    t = _table({"l": ["a", "b"], "one": "a", "empty": [], "blank": [""], "mixed": ["a", 1]})
    assert (t.strings("l"), t.strings("one"), t.strings("empty")) == (("a", "b"), ("a",), ())
    assert t.strings("absent") == () and t.strings("absent", ["x"]) == ("x",)
    for key, shown in (("blank", "['']"), ("mixed", "['a', 1]")):
        assert _line(lambda key=key: t.strings(key)) == (
            f'f.toml: t.{key} must be a list of strings, got {shown} (e.g. {key} = ["a", "b"])'
        )
    assert _line(lambda: _table({"n": 5}).strings("n")) == (
        'f.toml: t.n must be a list of strings, got 5 (e.g. n = ["a", "b"])'
    )


def test_strings_rules_of_a_strict_and_of_a_lenient_dialect() -> None:
    strict = replace(PLAIN, lone_string=False)
    assert _line(lambda: _table({"one": "a"}, strict).strings("one")) == (
        'f.toml: t.one must be a list of strings, got \'a\' (e.g. one = ["a", "b"])'
    )
    lenient = replace(PLAIN, empty_list=False, empty_items=True)
    t = _table({"blank": [""], "lone": "", "empty": []}, lenient)
    assert (t.strings("blank"), t.strings("lone"), t.strings("absent")) == (("",), ("",), ())
    assert _line(lambda: t.strings("empty")) == (
        'f.toml: t.empty must be a list of strings, got [] (e.g. empty = ["a", "b"])'
    )


def test_fail_and_get_serve_the_checks_of_a_files_own() -> None:
    t = _table({"raw": 3})
    assert (t.get("raw"), t.get("absent"), t.get("absent", 7)) == (3, None, 7)
    assert _line(lambda: t.fail("raw", "is odd", "make it even")) == (
        "f.toml: t.raw is odd (make it even)"
    )


def test_a_dialect_sets_the_error_type_and_every_word() -> None:
    own = Dialect(
        error=ImageError,
        not_table=Words("{source} lacks [{key}]", "add [{key}]"),
        unknown=Words("{source}: {key} unknown", "not {name}: one of {known}"),
        missing=Words("{source}: {key} absent", "write {key} = 1"),
        string=Words("{source}: {name} bad {value}", "s"),
        choice=Words("{source}: {key} not in {choices}: {value}", "like {example}"),
        integer=Words("{source}: {key} {value} not {low}..{high}", "like {example}"),
        number=Words("{source}: {key} {value} not positive", "like {example}"),
        boolean=Words("{source}: {key} {value} not a bool", "like {example}"),
        strings=Words("{source}: {key} {value} not strings", "like [{name}]"),
    )
    t = _table({"i": 0, "n": 0, "b": 0, "l": 0, "s": 0, "c": "z"}, own)
    cases = [
        (lambda: _table(1, own), "f.toml lacks [t] (add [t])"),
        (
            lambda: _table({"q": 1}, own, keys={"i", "n"}),
            "f.toml: t.q unknown (not q: one of i, n)",
        ),
        (lambda: t.string("absent", REQUIRED), "f.toml: t.absent absent (write t.absent = 1)"),
        (lambda: t.string("s"), "f.toml: s bad 0 (s)"),
        (lambda: t.string("c", choices=("x", "y")), "f.toml: t.c not in x, y: 'z' (like x)"),
        (lambda: t.integer("i", 3, low=1, high=9), "f.toml: t.i 0 not 1..9 (like 3)"),
        (lambda: t.number("n", 1.5), "f.toml: t.n 0 not positive (like 1.5)"),
        (lambda: t.boolean("b", True), "f.toml: t.b 0 not a bool (like true)"),
        (lambda: t.strings("l"), "f.toml: t.l 0 not strings (like [l])"),
        (lambda: t.fail("i", "is odd", "fix it"), "f.toml: t.i is odd (fix it)"),
    ]
    for call, line in cases:
        assert _line(call, ImageError) == line
