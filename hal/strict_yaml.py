"""The one strict YAML reader of the config file and the device profiles: YAML 1.1's silent
guesses and duplicate keys become problems with a path and a line.

PyYAML follows YAML 1.1, which reads ``no`` as false, ``010`` as octal 8 and ``1:30`` as 90, and
keeps the last of two duplicate keys without a word. In a file typed at a meter cabinet, or a
register map copied from a vendor's table, each of those is a mistake, so ``read_strict_yaml``
walks the parsed node tree before building the data and reports each one with its path and line.
Keys count as duplicates when they are written alike or when they mean the same (``2`` and
``0x02``, ``1`` and ``1.0``): either way PyYAML would keep only one of them.

It also returns the data paths whose value such a problem voids, so that a schema's message about
the same value ("must be a string") can be left out: the YAML message says it better.

It lives in ``hal`` because the profiles are read here and ``hal`` imports nothing of
``controller``; the config reader (``controller.config.reader``) turns what it finds into config
problems. It knows YAML nodes and marks, and nothing about what a config or a profile means.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

import yaml

Loc = tuple[Any, ...]

_BOOL_TAG = "tag:yaml.org,2002:bool"
_INT_TAG = "tag:yaml.org,2002:int"
_FLOAT_TAG = "tag:yaml.org,2002:float"
_MERGE_TAG = "tag:yaml.org,2002:merge"
_YAML11_BOOL = re.compile(r"yes|Yes|YES|no|No|NO|on|On|ON|off|Off|OFF")
_YAML11_OCTAL = re.compile(r"[-+]?0[0-7_]+")
_YAML11_BASE60 = re.compile(r"[-+]?[0-9][0-9_]*(?::[0-5]?[0-9])+(?:\.[0-9_]*)?")


@dataclass(frozen=True)
class YamlProblem:
    """One guess or duplicate: where (``path``: keys as written, list indexes) and why; the
    message ends with the line, e.g. ``duplicate key (line 7, first at line 3)``."""

    path: Loc
    message: str

    def render(self, top: str = "top level") -> str:
        where = ".".join(str(part) for part in self.path) if self.path else top
        return f"{where}: {self.message}"


class YamlSyntaxError(ValueError):
    """The text is not (safe) YAML. ``str()`` is one line: ``line L, column C: problem``."""


@dataclass(frozen=True)
class StrictYaml:
    """The data as PyYAML's safe loader builds it, and what the strict walk found in it."""

    data: Any
    problems: tuple[YamlProblem, ...] = ()
    void: frozenset[Loc] = frozenset()  # data paths (keys as loaded) whose value a problem voids


def read_strict_yaml(text: str) -> StrictYaml:
    """Parse one YAML document with the safe loader and walk it strictly. Raises YamlSyntaxError."""
    loader = yaml.SafeLoader(text)
    try:
        node = loader.get_single_node()
        if node is None:
            return StrictYaml(None)
        scan = _Scan(loader)
        scan.walk(node, (), ())
        data = loader.construct_document(node)
        return StrictYaml(data, tuple(scan.problems), frozenset(scan.void))
    except yaml.YAMLError as exc:
        raise YamlSyntaxError(_one_line(exc)) from None
    finally:
        loader.dispose()


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
    problems: list[YamlProblem] = field(default_factory=list)
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
            self.problems.append(YamlProblem(path, f"{reason} (line {node.start_mark.line + 1})"))
            self.void.add(data_path)

    def _mapping(self, node: yaml.MappingNode, path: Loc, data_path: Loc) -> None:
        first_line: dict[str, int] = {}
        first_as_loaded: dict[Any, tuple[str, int]] = {}
        for key_node, value_node in node.value:
            line = key_node.start_mark.line + 1
            if key_node.tag == _MERGE_TAG:
                self.walk(value_node, path, data_path)
                continue
            if not isinstance(key_node, yaml.ScalarNode):
                self.problems.append(YamlProblem(path, f"a key must be plain text (line {line})"))
                continue
            text = key_node.value
            key = self.loader.construct_object(key_node)
            key_path, key_data_path = path + (text,), data_path + (key,)
            reason = _ambiguity(key_node, key)
            if reason is not None:
                self.problems.append(YamlProblem(key_path, f"{reason} (line {line})"))
                self.void.add(key_data_path)
            same = first_as_loaded.get(key)  # a plain scalar loads as a hashable value
            if text in first_line:
                reason = f"duplicate key (line {line}, first at line {first_line[text]})"
                self.problems.append(YamlProblem(key_path, reason))
            elif same is not None:
                reason = f"duplicate key (line {line}, first at line {same[1]} as {same[0]})"
                self.problems.append(YamlProblem(key_path, reason))
            else:
                first_line[text] = line
                first_as_loaded[key] = (text, line)
            self.walk(value_node, key_path, key_data_path)


def _one_line(exc: yaml.YAMLError) -> str:
    if isinstance(exc, yaml.MarkedYAMLError) and exc.problem_mark is not None:
        mark = exc.problem_mark
        where = f"line {mark.line + 1}, column {mark.column + 1}"
        context = ""
        if exc.context and exc.context_mark is not None:
            context = f" ({exc.context} at line {exc.context_mark.line + 1}, column {exc.context_mark.column + 1})"
        return f"{where}: {exc.problem}{context}"
    return f"YAML: {exc}"


__all__ = ["Loc", "StrictYaml", "YamlProblem", "YamlSyntaxError", "read_strict_yaml"]
