"""YAML text read safely: every YAML text sftkd reads (recipes, plans, `section.key=value`
overrides) goes through `load_yaml` (or `parse_yaml`): anchors and aliases are refused (an alias
"bomb" of a few hundred bytes expands to gigabytes), a repeated key is refused, and the size,
nesting depth and number of values are bounded. Numbers are decimal, as in YAML 1.2 (YAML 1.1
would read 042 as 34): see `_DECIMAL_INT`.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import yaml

from sftkd_cli.errors import SftkdError

#: limits on any YAML text: bytes of a file, nesting depth, and number of values (scalars,
#: lists and mappings); far above any recipe or plan, far below what could exhaust memory
MAX_YAML_BYTES = 4 * 1024 * 1024
MAX_YAML_DEPTH = 32
MAX_YAML_NODES = 100_000


class YamlRefused(yaml.YAMLError):
    """A YAML text that is well formed but not accepted (alias, anchor, too deep, too many values)."""

    def __init__(self, problem: str, mark: yaml.Mark | None) -> None:
        super().__init__(problem)
        self.problem = problem
        self.problem_mark = mark


class _BoundedLoader(yaml.SafeLoader):
    """yaml.SafeLoader that refuses anchors and aliases and bounds nesting depth and node count.

    Composition stops at the first offending node, so an alias bomb is never expanded and deep
    nesting never reaches Python's recursion limit."""

    def __init__(self, stream: str) -> None:
        super().__init__(stream)
        self._depth = 0
        self._nodes = 0

    def compose_node(self, parent: Any, index: Any) -> Any:
        event = self.peek_event()
        if isinstance(event, yaml.AliasEvent) or getattr(event, "anchor", None) is not None:
            raise YamlRefused("has an anchor or alias (&name, *name); expected the values written out", event.start_mark)
        self._nodes += 1
        if self._nodes > MAX_YAML_NODES:
            raise YamlRefused(f"has more than {MAX_YAML_NODES} values", event.start_mark)
        if self._depth >= MAX_YAML_DEPTH:
            raise YamlRefused(f"is nested deeper than {MAX_YAML_DEPTH} levels", event.start_mark)
        self._depth += 1
        try:
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1

    def construct_mapping(self, node: Any, deep: bool = False) -> Any:
        """A mapping whose keys are all different: a repeated key (or section) is refused, not
        silently replaced by its last value (a merge key, `<<: {...}`, merges as YAML says)."""
        seen: set[Any] = set()
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                continue
            key = self.construct_object(key_node, deep=True)
            if isinstance(key, (str, int, float, bool)) or key is None:
                if key in seen:
                    raise YamlRefused(f"repeats the key {key!r}; expected each key once", key_node.start_mark)
                seen.add(key)
        return super().construct_mapping(node, deep=deep)


_INT_TAG, _FLOAT_TAG = "tag:yaml.org,2002:int", "tag:yaml.org,2002:float"
#: a plain integer is decimal (YAML 1.2): YAML 1.1 reads 042 as 34 (octal), 0x10 as 16 and 1:30 as
#: 90 (base 60), values a recipe would take silently; those stay text, which a number key refuses
_DECIMAL_INT = re.compile(r"[-+]?(?:0|[1-9][0-9_]*)")
#: YAML 1.1's floats (1.5, 1.0e-3, .inf, .nan) without its base-60 form (1:30.5 is 90.5)
_FLOAT = re.compile(r"""[-+]?(?:[0-9][0-9_]*)\.[0-9_]*(?:[eE][-+][0-9]+)?
                       |\.[0-9][0-9_]*(?:[eE][-+][0-9]+)?
                       |[-+]?\.(?:inf|Inf|INF)
                       |\.(?:nan|NaN|NAN)""", re.X)
#: what YAML 1.1 would have read as a number in another base (octal, hex, binary, base 60)
NOT_DECIMAL = re.compile(r"[-+]?(?:0[0-9_]+|0[xob][0-9a-fA-F_]+|[0-9][0-9_]*(?::[0-5]?[0-9])+(?:\.[0-9_]*)?)")


def _decimal_resolvers() -> dict[str, list[tuple[str, re.Pattern[str]]]]:
    """SafeLoader's implicit resolvers with its int and float ones replaced by `_DECIMAL_INT` and `_FLOAT`."""
    resolvers = {first: [(tag, regexp) for tag, regexp in pairs if tag not in (_INT_TAG, _FLOAT_TAG)]
                 for first, pairs in yaml.SafeLoader.yaml_implicit_resolvers.items()}
    for tag, regexp, firsts in ((_INT_TAG, _DECIMAL_INT, "-+0123456789"), (_FLOAT_TAG, _FLOAT, "-+0123456789.")):
        for first in firsts:
            resolvers.setdefault(first, []).append((tag, re.compile(rf"^(?:{regexp.pattern})$", re.X)))
    return resolvers


_BoundedLoader.yaml_implicit_resolvers = _decimal_resolvers()


def _construct_int(loader: _BoundedLoader, node: yaml.ScalarNode) -> int:
    """An explicit `!!int` is decimal too (see `_DECIMAL_INT`)."""
    text = loader.construct_scalar(node)
    if not _DECIMAL_INT.fullmatch(text):
        raise yaml.constructor.ConstructorError(None, None, f"expected a decimal integer, got {text!r}", node.start_mark)
    return int(text.replace("_", ""))


def _construct_float(loader: _BoundedLoader, node: yaml.ScalarNode) -> float:
    """An explicit `!!float` has no base-60 form (see `_FLOAT`)."""
    if ":" in loader.construct_scalar(node):
        raise yaml.constructor.ConstructorError(None, None, "expected a decimal number", node.start_mark)
    return loader.construct_yaml_float(node)


_BoundedLoader.add_constructor(_INT_TAG, _construct_int)
_BoundedLoader.add_constructor(_FLOAT_TAG, _construct_float)


class _TextLoader(_BoundedLoader):
    """`_BoundedLoader` that reads every plain scalar as the text written (a merge key still merges)."""


_TextLoader.yaml_implicit_resolvers = {"<": list(yaml.SafeLoader.yaml_implicit_resolvers["<"])}


def parse_yaml(text: str, as_text: bool = False) -> Any:
    """One YAML document through `_BoundedLoader` (raises yaml's errors, YamlRefused, ValueError);
    with `as_text`, every plain scalar is the text written (`1.50` stays "1.50", `no` stays "no")."""
    loader = (_TextLoader if as_text else _BoundedLoader)(text)
    try:
        return loader.get_single_data()
    finally:
        loader.dispose()


def refused_error(exc: YamlRefused, source: str) -> SftkdError:
    """The one-line error for a refused YAML text of `source`, with its line when known."""
    mark = exc.problem_mark
    return SftkdError(f"{source}: YAML {exc.problem}{f' (line {mark.line + 1})' if mark else ''}")


def _at(mark: yaml.Mark) -> str:
    """'line 3, column 1' (1-based) for a yaml mark."""
    return f"line {mark.line + 1}, column {mark.column + 1}"


#: an unclosed bracket or quote, told from yaml's context: context -> what was opened
_OPENED = {"while parsing a flow sequence": "'['", "while parsing a flow mapping": "'{'",
           "while scanning a quoted scalar": "the quote"}


def yaml_problem(exc: yaml.YAMLError) -> str:
    """Where and what yaml found wrong, as one line to follow 'not valid YAML': ' at line 3,
    column 1: found a tab character (indent with spaces)'; '' when yaml says nothing."""
    if isinstance(exc, yaml.reader.ReaderError):  # no mark: a character YAML does not allow
        char = exc.character if isinstance(exc.character, int) else ord(exc.character)
        return f" at character {exc.position + 1}: character U+{char:04X} is not allowed in YAML"
    mark = getattr(exc, "problem_mark", None)
    problem = getattr(exc, "problem", None) or ""
    context, context_mark = getattr(exc, "context", None), getattr(exc, "context_mark", None)
    if "'\\t'" in problem:
        problem = "found a tab character (indent with spaces)"
    elif context in _OPENED and context_mark is not None and ("<stream end>" in problem or "end of stream" in problem):
        mark, problem = context_mark, f"{_OPENED[context]} is never closed"
    where = f" at {_at(mark)}" if mark is not None else ""
    problem = " ".join(problem.split())
    return f"{where}: {problem}" if problem else where


def load_yaml(text: str, source: str) -> Any:
    """Parse one YAML document safely (see the module docstring); errors are one line naming `source`."""
    try:
        return parse_yaml(text)
    except YamlRefused as exc:
        raise refused_error(exc, source) from None
    except yaml.YAMLError as exc:
        raise SftkdError(f"{source}: not valid YAML{yaml_problem(exc)}") from None
    except (ValueError, OverflowError) as exc:  # e.g. a date 2024-13-45, an integer of 5000 digits
        raise SftkdError(f"{source}: not valid YAML ({exc})") from None


def read_yaml_file(path: str | Path, what: str) -> Any:
    """Read and parse the YAML file `path` (a `what`: recipe, plan) with the limits of `load_yaml`."""
    return load_yaml(read_yaml_text(path, what), str(path))


def read_yaml_text(path: str | Path, what: str) -> str:
    """The text of the YAML file `path` (a `what`), refused in one line when it cannot be one."""
    p = Path(path)
    if p.is_dir():
        raise SftkdError(f"{path}: is a folder; expected a {what} file")
    if not p.is_file():
        raise SftkdError(f"{path}: {what} file not found")
    try:
        size = p.stat().st_size
        if size > MAX_YAML_BYTES:
            raise SftkdError(f"{path}: {size} bytes; expected a {what} file of at most {MAX_YAML_BYTES // 2**20} MiB")
        text = p.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise SftkdError(f"{path}: not UTF-8 text; expected a YAML {what} file") from None
    except OSError as exc:
        raise SftkdError(f"{path}: cannot read ({exc.strerror or exc})") from None
    return text
