"""A careful YAML reader for the config file: YAML 1.1's silent guesses become errors.

PyYAML follows YAML 1.1, which reads ``no`` as false, ``010`` as octal 8 and ``1:30`` as 90, and
keeps the last of two duplicate keys without a word. For a config typed at a meter cabinet each of
those is a mistake, so this module walks the parsed node tree before building the data and reports
each one with its path and line. It also returns the data paths whose value such a problem voids,
so that the schema's message about the same value ("must be a string") can be left out: the YAML
message says it better.

It is separate from the schema and the checks because it knows YAML nodes and marks, and nothing
about what a config means.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

import yaml

from controller.config.problems import ConfigError, Loc, Problem

_BOOL_TAG = "tag:yaml.org,2002:bool"
_INT_TAG = "tag:yaml.org,2002:int"
_FLOAT_TAG = "tag:yaml.org,2002:float"
_MERGE_TAG = "tag:yaml.org,2002:merge"
_YAML11_BOOL = re.compile(r"yes|Yes|YES|no|No|NO|on|On|ON|off|Off|OFF")
_YAML11_OCTAL = re.compile(r"[-+]?0[0-7_]+")
_YAML11_BASE60 = re.compile(r"[-+]?[0-9][0-9_]*(?::[0-5]?[0-9])+(?:\.[0-9_]*)?")


def _ambiguity(node: yaml.ScalarNode, value: Any) -> str | None:
    """Why a plain scalar means something else than it seems under YAML 1.1, or None."""
    if node.style is not None:  # quoted or block scalars are always text
        return None
    text = node.value
    if node.tag == _BOOL_TAG and _YAML11_BOOL.fullmatch(text):
        word = "true" if value else "false"
        return f"'{text}' is read by YAML as {word}: write {word} if you mean that, or \"{text}\" in quotes for text"
    if node.tag == _INT_TAG and _YAML11_OCTAL.fullmatch(text):
        decimal = int(text.replace("_", ""), 10)
        return (
            f"{text} is read by YAML as the octal number {value}: write {value}, or {decimal} without "
            f"the leading zero, or \"{text}\" in quotes for text"
        )
    if node.tag in (_INT_TAG, _FLOAT_TAG) and _YAML11_BASE60.fullmatch(text):
        return f"{text} is read by YAML as {value} (base 60): write \"{text}\" in quotes"
    return None


@dataclass
class _Scan:
    """What the node walk found: problems with their path, and data paths whose value is void."""

    loader: yaml.SafeLoader
    problems: list[Problem] = field(default_factory=list)
    void: set[Loc] = field(default_factory=set)
    seen: set[int] = field(default_factory=set)

    def walk(self, node: yaml.Node, path: Loc, data_path: Loc) -> None:
        if id(node) in self.seen:  # an alias: checked where its anchor is; keeps the walk linear
            return
        self.seen.add(id(node))
        if isinstance(node, yaml.ScalarNode):
            self._scalar(node, path, data_path)
        elif isinstance(node, yaml.SequenceNode):
            for index, child in enumerate(node.value):
                self.walk(child, path + (index,), data_path + (index,))
        elif isinstance(node, yaml.MappingNode):
            self._mapping(node, path, data_path)

    def _scalar(self, node: yaml.ScalarNode, path: Loc, data_path: Loc) -> None:
        reason = _ambiguity(node, self.loader.construct_object(node))
        if reason is not None:
            self.problems.append(Problem(path, f"{reason} (line {node.start_mark.line + 1})"))
            self.void.add(data_path)

    def _mapping(self, node: yaml.MappingNode, path: Loc, data_path: Loc) -> None:
        first_line: dict[str, int] = {}
        for key_node, value_node in node.value:
            line = key_node.start_mark.line + 1
            if key_node.tag == _MERGE_TAG:
                self.walk(value_node, path, data_path)
                continue
            if not isinstance(key_node, yaml.ScalarNode):
                self.problems.append(Problem(path, f"a key must be plain text (line {line})"))
                continue
            text = key_node.value
            key = self.loader.construct_object(key_node)
            key_path, key_data_path = path + (text,), data_path + (key,)
            reason = _ambiguity(key_node, key)
            if reason is not None:
                self.problems.append(Problem(key_path, f"{reason} (line {line})"))
                self.void.add(key_data_path)
            if text in first_line:
                reason = f"duplicate key (line {line}, first at line {first_line[text]})"
                self.problems.append(Problem(key_path, reason))
            else:
                first_line[text] = line
            self.walk(value_node, key_path, key_data_path)


def _yaml_error(exc: yaml.YAMLError) -> str:
    if isinstance(exc, yaml.MarkedYAMLError) and exc.problem_mark is not None:
        mark = exc.problem_mark
        where = f"line {mark.line + 1}, column {mark.column + 1}"
        context = ""
        if exc.context and exc.context_mark is not None:
            context = f" ({exc.context} at line {exc.context_mark.line + 1}, column {exc.context_mark.column + 1})"
        return f"{where}: {exc.problem}{context}"
    return f"YAML: {exc}"


def read_yaml(text: str, source: str) -> tuple[Any, list[Problem], set[Loc]]:
    """Parse one YAML document; return data, YAML-level problems and the paths they void."""
    loader = yaml.SafeLoader(text)
    try:
        node = loader.get_single_node()
        if node is None:
            return None, [], set()
        scan = _Scan(loader)
        scan.walk(node, (), ())
        data = loader.construct_document(node)
        return data, scan.problems, scan.void
    except yaml.YAMLError as exc:
        raise ConfigError([_yaml_error(exc)], source) from None
    finally:
        loader.dispose()
