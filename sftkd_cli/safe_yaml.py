"""YAML text read safely: every YAML text sftkd reads (recipes, plans, `section.key=value`
overrides) goes through `load_yaml` (or `parse_yaml`): anchors and aliases are refused (an alias
"bomb" of a few hundred bytes expands to gigabytes), a repeated key is refused, and the size,
nesting depth and number of values are bounded.
"""

from __future__ import annotations

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


def parse_yaml(text: str) -> Any:
    """One YAML document through `_BoundedLoader` (raises yaml's errors, YamlRefused, ValueError)."""
    loader = _BoundedLoader(text)
    try:
        return loader.get_single_data()
    finally:
        loader.dispose()


def refused_error(exc: YamlRefused, source: str) -> SftkdError:
    """The one-line error for a refused YAML text of `source`, with its line when known."""
    mark = exc.problem_mark
    return SftkdError(f"{source}: YAML {exc.problem}{f' (line {mark.line + 1})' if mark else ''}")


def load_yaml(text: str, source: str) -> Any:
    """Parse one YAML document safely (see the module docstring); errors are one line naming `source`."""
    try:
        return parse_yaml(text)
    except YamlRefused as exc:
        raise refused_error(exc, source) from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        at = f" (line {mark.line + 1})" if mark else ""
        raise SftkdError(f"{source}: not valid YAML{at}") from None
    except (ValueError, OverflowError) as exc:  # e.g. a date 2024-13-45, an integer of 5000 digits
        raise SftkdError(f"{source}: not valid YAML ({exc})") from None


def read_yaml_file(path: str | Path, what: str) -> Any:
    """Read and parse the YAML file `path` (a `what`: recipe, plan) with the limits of `load_yaml`."""
    p = Path(path)
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
    return load_yaml(text, str(path))
