"""hal.strict_yaml: the one strict YAML reader of the config and the profiles, on YAML text.

The config's messages through it are pinned in test_config.py; here the reader itself, and the
profiles' gain: the same strictness as the config.
"""

from __future__ import annotations

import pytest

from controller.config.problems import ConfigError, Problem
from controller.config.reader import read_yaml
from hal.modbus.profile import ProfileError, profile_from_yaml
from hal.strict_yaml import YamlProblem, YamlSyntaxError, read_strict_yaml


def test_clean_yaml_has_no_problems_and_is_what_safe_load_builds() -> None:
    read = read_strict_yaml("a: 1\nb: [true, '010', \"no\", 0x1F, 1.5]\nc: {d: null}\n")
    assert read.data == {"a": 1, "b": [True, "010", "no", 31, 1.5], "c": {"d": None}}
    assert read.problems == () and read.void == frozenset()


def test_an_empty_document_is_none() -> None:
    assert read_strict_yaml("# nothing\n").data is None


@pytest.mark.parametrize(("text", "path", "fragment"), [
    ("pull_up: no\n", ("pull_up",), "'no' is read by YAML as false: write false"),
    ("x:\n  - On\n", ("x", 0), "'On' is read by YAML as true"),
    ("unit: 010\n", ("unit",), "010 is read by YAML as the octal number 8: write 8, or 10 without"),
    ("pause: 1:30\n", ("pause",), "1:30 is read by YAML as 90 (base 60)"),
    ("ON: 1\n", ("ON",), "'ON' is read by YAML as true"),
])
def test_yaml_11_guesses_are_problems_with_path_and_line(text: str, path: tuple[object, ...], fragment: str) -> None:
    read = read_strict_yaml(text)
    [problem] = read.problems
    line = text.count("\n")  # each guess is on the last line
    assert problem.path == path and fragment in problem.message and problem.message.endswith(f"(line {line})")
    assert len(read.void) == 1


def test_the_void_path_is_the_data_path_as_loaded() -> None:
    read = read_strict_yaml("states:\n  yes: 1\n  5: off\n")
    assert {p.path for p in read.problems} == {("states", "yes"), ("states", "5")}
    assert read.void == {("states", True), ("states", 5)}


def test_duplicate_keys_written_alike_or_meaning_the_same() -> None:
    read = read_strict_yaml("map:\n  2: A\n  0x02: B\n  1: C\n  1.0: D\n  x: 1\n  x: 2\n")
    assert sorted(read.problems, key=lambda p: p.message) == [
        YamlProblem(("map", "0x02"), "duplicate key (line 3, first at line 2 as 2)"),
        YamlProblem(("map", "1.0"), "duplicate key (line 5, first at line 4 as 1)"),
        YamlProblem(("map", "x"), "duplicate key (line 7, first at line 6)"),
    ]


def test_anchors_aliases_and_merge_keys_are_fine_and_checked_once() -> None:
    read = read_strict_yaml("base: &b {a: 1, flag: no}\none:\n  <<: *b\n  c: 2\ntwo: *b\n")
    assert read.data["one"] == {"a": 1, "flag": False, "c": 2}
    assert [p.path for p in read.problems] == [("base", "flag")]


@pytest.mark.parametrize(("text", "message"), [
    ("a: [1\n", "line 2, column 1: expected ',' or ']', but got '<stream end>' "
                "(while parsing a flow sequence at line 1, column 4)"),
    ("a:\n\tb: 1\n", "line 2, column 1: found character '\\t' that cannot start any token"),
])
def test_a_syntax_error_is_one_line_with_its_position(text: str, message: str) -> None:
    with pytest.raises(YamlSyntaxError) as caught:
        read_strict_yaml(text)
    assert str(caught.value) == message


def test_python_tags_are_refused_as_not_safe_yaml() -> None:
    with pytest.raises(YamlSyntaxError, match="could not determine a constructor"):
        read_strict_yaml("a: !!python/object:os.system {}\n")


def test_the_config_reader_speaks_config_problems() -> None:
    data, problems, void = read_yaml("site:\n  a: 1\n  a: 2\n", "site.yaml")
    assert data == {"site": {"a": 2}} and void == set()
    assert problems == [Problem(("site", "a"), "duplicate key (line 3, first at line 2)")]
    with pytest.raises(ConfigError) as caught:
        read_yaml("site: [\n", "site.yaml")
    assert caught.value.source == "site.yaml" and caught.value.errors[0].startswith("line 2, column 1: ")


METER = """\
model: my_meter
kind: meter
values:
  power_w: {table: input, address: 0, type: float32}
"""


def test_a_profile_gets_the_same_strictness_as_the_config() -> None:
    assert profile_from_yaml(METER, "my_meter.yaml").model == "my_meter"
    with pytest.raises(ProfileError) as caught:
        profile_from_yaml(METER.replace("address: 0,", "address: 010,") + "kind: charger\n", "my_meter.yaml")
    assert caught.value.errors == [
        "values.power_w.address: 010 is read by YAML as the octal number 8: write 8, or 10 without the "
        "leading zero, or \"010\" in quotes for text (line 4)",
        "kind: duplicate key (line 5, first at line 2)",
    ]
    assert str(caught.value).startswith("my_meter.yaml: values.power_w.address: 010 is read")


def test_a_profile_that_is_not_yaml_says_where() -> None:
    with pytest.raises(ProfileError, match=r"^x\.yaml: YAML: line 2, column 1: "):
        profile_from_yaml("values: {\n", "x.yaml")
