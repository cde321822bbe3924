"""The option-declaration table: every type's parsing and the Declared registry."""

import pytest

from powernap.options import (
    Boolean,
    Choice,
    Declared,
    Duration,
    Integer,
    ListOf,
    Number,
    Option,
    PortRanges,
    Regex,
    Size,
    String,
    parse_duration,
    registry,
)


@pytest.mark.parametrize(
    "text, seconds",
    [
        ("45", 45.0),
        ("90s", 90.0),
        ("10m", 600.0),
        ("2h", 7200.0),
        ("1d", 86400.0),
        ("1h30m", 5400.0),
        ("500ms", 0.5),
        ("1.5h", 5400.0),
        (" 3 min ", 180.0),
    ],
)
def test_duration_accepts_units(text, seconds):
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["", "ten", "10x", "5m-", "-5s", "1h 2q"])
def test_duration_rejects_garbage(text):
    with pytest.raises(ValueError, match="not a duration"):
        parse_duration(text)


def test_duration_range_is_checked():
    with pytest.raises(ValueError, match="below the minimum 10s"):
        Duration(minimum=10).parse("5s")


@pytest.mark.parametrize("text, value", [("yes", True), ("On", True), ("1", True), ("no", False), ("FALSE", False)])
def test_boolean(text, value):
    assert Boolean().parse(text) is value


def test_boolean_rejects_other_words():
    with pytest.raises(ValueError, match="not a boolean"):
        Boolean().parse("maybe")


def test_integer_and_number_ranges():
    assert Integer(minimum=1, maximum=10).parse("0x0a") == 10
    with pytest.raises(ValueError, match="above the maximum 10"):
        Integer(maximum=10).parse("11")
    with pytest.raises(ValueError, match="not an integer"):
        Integer().parse("1.5")
    assert Number(minimum=0).parse("0.25") == 0.25
    with pytest.raises(ValueError, match="not a number"):
        Number().parse("nan")


def test_size_units():
    assert Size().parse("4096") == 4096
    assert Size().parse("64k") == 64000
    assert Size().parse("1GiB") == 2**30
    with pytest.raises(ValueError, match="not a size"):
        Size().parse("lots")


def test_choice_names_the_choices():
    with pytest.raises(ValueError, match="one of: a, b"):
        Choice("a", "b").parse("c")


def test_regex_is_compiled_and_errors_are_readable():
    assert Regex().parse("^nginx").match("nginx: master")
    with pytest.raises(ValueError, match="bad regular expression"):
        Regex().parse("(unclosed")


def test_port_ranges():
    assert PortRanges().parse("22, 80,8000-8100") == ((22, 22), (80, 80), (8000, 8100))
    for bad, message in (
        ("0", "outside"),
        ("70000", "outside"),
        ("90-80", "backwards"),
        ("ssh", "not a port"),
        ("", "no ports"),
    ):
        with pytest.raises(ValueError, match=message):
            PortRanges().parse(bad)


def test_list_of_items_reports_the_bad_item():
    assert ListOf(Integer()).parse("1, 2\n3") == (1, 2, 3)
    with pytest.raises(ValueError, match="list item 'x'"):
        ListOf(Integer()).parse("1, x")
    with pytest.raises(ValueError, match="at least one"):
        ListOf(String(), nonempty=True).parse(" , ")


def test_option_requires_documentation():
    with pytest.raises(TypeError, match="needs a doc"):
        Option("x", String())


class _Sample(Declared):
    """A sample declared section."""

    KIND = "test-kind"
    TYPE = "sample"
    OPTIONS = (
        Option("count", Integer(minimum=0), default=3, doc="How many."),
        Option("name", String(nonempty=True), required=True, doc="What it is called."),
        Option("secret", String(), default="", doc="A password.", secret=True),
    )


def test_declared_classes_register_and_parse():
    assert registry("test-kind") == {"sample": _Sample}
    assert _Sample.parse_options({"name": "web"}) == {"name": "web", "count": 3, "secret": ""}


def test_parse_options_reports_every_problem():
    problems = []
    _Sample.parse_options({"count": "-1", "colour": "red"}, on_error=lambda name, msg: problems.append((name, msg)))
    names = [name for name, _msg in problems]
    assert names == ["count", "colour", "name"]
    assert "below the minimum 0" in problems[0][1]
    assert "unknown option 'colour'" in problems[1][1] and "known: count, name, secret" in problems[1][1]
    assert "required" in problems[2][1]


def test_parse_options_without_handler_raises_first_problem():
    with pytest.raises(ValueError, match="count"):
        _Sample.parse_options({"name": "x", "count": "many"})


def test_schema_carries_docs_defaults_and_no_log():
    schema = _Sample.schema()
    assert schema["description"] == "A sample declared section."
    assert schema["options"]["count"] == {
        "type": "int",
        "description": "How many.",
        "required": False,
        "default": 3,
        "format": "integer in [0, inf]",
    }
    assert schema["options"]["name"]["required"] is True and "default" not in schema["options"]["name"]
    assert schema["options"]["secret"]["no_log"] is True


def test_duplicate_option_names_are_refused():
    with pytest.raises(TypeError, match="declares an option twice"):

        class _Twice(Declared):
            OPTIONS = (Option("a", String(), doc="one"), Option("a", String(), doc="two"))
