"""Strict YAML reading shared by manifests and policies: duplicate keys, alias bombs, line numbers."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import yaml

from runner.errors import ManifestError

# A manifest is a few hundred nodes; this bound stops alias expansion ("billion laughs") early.
MAX_EXPANDED_NODES = 100_000


@dataclass(frozen=True)
class Problem:
    """One thing wrong with a document, printed as one line."""

    path: str  # field path such as data[1].sha256 ("" for the document)
    message: str
    line: int | None = None

    def render(self, file: str) -> str:
        """`file:line: field: message` (line and field omitted when unknown)."""
        where = f"{file}:{self.line}" if self.line else file
        return f"{where}: {self.path}: {self.message}" if self.path else f"{where}: {self.message}"


def field_path(parts: Any) -> str:
    """('data', 1, 'sha256') → 'data[1].sha256'."""
    out = ""
    for part in parts:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


class _Loader(yaml.SafeLoader):
    """SafeLoader that keeps nodes so we can map field paths to lines before constructing."""


class _YamlAbort(Exception):
    """Stops the node walk at once (bomb, recursion); parse_yaml adds the file name."""

    def __init__(self, line: int, message: str) -> None:
        super().__init__(message)
        self.line, self.message = line, message


def parse_yaml(text: bytes, shown: str, *, allow_aliases: bool = True) -> tuple[Any, dict[str, int]]:
    """Parse YAML safely: duplicate keys and alias bombs are errors; returns (data, path → line)."""
    try:
        loader = _Loader(text)
        try:
            node = loader.get_single_node()
            if node is None:
                raise ManifestError(f"{shown}: the file is empty; start from `xrun schema` or examples/")
            lines: dict[str, int] = {}
            problems: list[Problem] = []
            try:
                _walk(node, "", lines, problems, {}, set(), allow_aliases)
            except _YamlAbort as abort:
                raise ManifestError(f"{shown}:{abort.line}: {abort.message}") from None
            if problems:
                raise ManifestError(f"{shown}: {len(problems)} problem{'s' if len(problems) > 1 else ''} found",
                                    lines=[p.render(shown) for p in problems])
            data = loader.construct_document(node)
        finally:
            loader.dispose()
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        where = f"{shown}:{mark.line + 1}:{mark.column + 1}" if mark else shown
        raise ManifestError(f"{where}: YAML syntax error: {exc.problem or exc.context}; fix the YAML at that spot") from None
    except yaml.YAMLError as exc:
        raise ManifestError(f"{shown}: YAML error: {exc}") from None
    except UnicodeDecodeError:
        raise ManifestError(f"{shown}: not UTF-8 text; save the manifest as UTF-8") from None
    return data, lines


def _walk(node: yaml.Node, path: str, lines: dict[str, int], problems: list[Problem],
          sizes: dict[int, int], stack: set[int], allow_aliases: bool) -> int:
    """Record lines, find duplicate keys, and return the node's expanded size (memoised per node)."""
    if id(node) in stack:
        raise _YamlAbort(node.start_mark.line + 1, f"{path or 'document'}: a YAML alias refers to "
                            "itself (recursive structure); remove the recursive alias")
    if id(node) in sizes:
        if not allow_aliases:
            raise _YamlAbort(node.start_mark.line + 1, f"{path or 'document'}: YAML anchors/aliases are not allowed "
                             "here; write the value out")
        return sizes[id(node)]
    lines.setdefault(path, node.start_mark.line + 1)
    stack.add(id(node))
    size = 1
    if isinstance(node, yaml.MappingNode):
        seen: dict[Any, int] = {}
        for key_node, value_node in node.value:
            key = key_node.value if isinstance(key_node, yaml.ScalarNode) else repr(key_node)
            child = f"{path}.{key}" if path else str(key)
            if key == "<<":
                size += _walk(value_node, path, lines, problems, sizes, stack, allow_aliases)
                continue
            if key in seen:
                problems.append(Problem(child, f"duplicate key {key!r} (first at line {seen[key]}); "
                                        "keep one of them", key_node.start_mark.line + 1))
            else:
                seen[key] = key_node.start_mark.line + 1
            size += _walk(value_node, child, lines, problems, sizes, stack, allow_aliases)
    elif isinstance(node, yaml.SequenceNode):
        for index, item in enumerate(node.value):
            size += _walk(item, f"{path}[{index}]", lines, problems, sizes, stack, allow_aliases)
    stack.discard(id(node))
    sizes[id(node)] = size
    if size > MAX_EXPANDED_NODES:
        raise _YamlAbort(node.start_mark.line + 1, f"{path or 'document'}: YAML aliases expand to more "
                            f"than {MAX_EXPANDED_NODES} nodes (a YAML bomb?); write the values out instead")
    return size
