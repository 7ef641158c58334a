"""Candidates from LLM answers: find the Python file defining ModelNew in the fenced blocks.

A model answers with prose, sometimes drafts, sometimes the kernel in its own ```cpp or
```cuda block that the Python code names as KERNEL_SOURCE / CUDA_SOURCE. What cannot be
turned into a candidate is a format failure with a specific reason, never an exception:
the loop answers it with a format retry.
"""
from __future__ import annotations

import ast
import dataclasses
import re
import textwrap

PYTHON_TAGS = {"py", "python", "python3", "py3"}
CPP_TAGS = {"cpp", "c++", "cc", "cxx", "c", "h", "hpp"}
CUDA_TAGS = {"cuda", "cu", "cuh"}
# The names the Python code may leave undefined when the kernel source sits in its own block.
SOURCE_NAMES = {"KERNEL_SOURCE": CPP_TAGS, "CUDA_SOURCE": CUDA_TAGS}

_FENCE = re.compile(r"^[ \t]*(`{3,}|~{3,})[ \t]*([^\s`]*)[^`]*$")
_MODELNEW = re.compile(r"^class[ \t]+ModelNew\b", re.M)


@dataclasses.dataclass(frozen=True)
class Block:
    tag: str  # lower-cased info string ("python", "cpp", "" when untagged)
    text: str
    closed: bool


@dataclasses.dataclass(frozen=True)
class Extracted:
    source: str | None  # the candidate file, or None on a format failure
    reason: str  # why there is no candidate, or where it came from
    blocks: int  # complete fenced blocks in the answer

    @property
    def ok(self) -> bool:
        return self.source is not None


def blocks(text: str) -> list[Block]:
    """Fenced blocks in order; a last block whose fence never closed has closed=False."""
    found: list[Block] = []
    lines = text.splitlines()
    i = 0
    while i < len(lines):
        opening = _FENCE.match(lines[i])
        if not opening:
            i += 1
            continue
        fence = opening.group(1)
        tag = re.match(r"[a-z0-9+#_-]*", opening.group(2).lower()).group(0)  # type: ignore[union-attr]  # * always matches
        body: list[str] = []
        i += 1
        while i < len(lines):
            m = _FENCE.match(lines[i])
            # a closing fence: same character, at least as long, nothing after it
            if m and m.group(1)[0] == fence[0] and len(m.group(1)) >= len(fence) and not m.group(2) \
                    and lines[i].strip() == m.group(1):
                break
            body.append(lines[i])
            i += 1
        # dedent: a block inside a markdown list item is indented as a whole
        found.append(Block(tag, textwrap.dedent("\n".join(body)) + "\n", closed=i < len(lines)))
        i += 1
    return found


def _is_python_tag(tag: str) -> bool:
    return tag in PYTHON_TAGS or tag == ""


def _defines_modelnew(tree: ast.Module) -> bool:
    return any(isinstance(n, ast.ClassDef) and n.name == "ModelNew" for n in tree.body)


def _syntax_error(e: SyntaxError) -> str:
    return f"syntax error at line {e.lineno}: {e.msg}"


def extract(text: str) -> Extracted:
    found = blocks(text)
    complete = [b for b in found if b.closed]
    unclosed = [b for b in found if not b.closed]
    if not found:
        return _unfenced(text)

    # The last complete Python (or untagged) block with a top-level `class ModelNew`.
    candidates = [b for b in complete if _is_python_tag(b.tag) and _MODELNEW.search(b.text)]
    if not candidates:
        if unclosed and _is_python_tag(unclosed[0].tag):
            return Extracted(None, "truncated: unclosed code fence", len(complete))
        if not complete:
            return Extracted(None, "truncated: unclosed code fence", 0)
        return Extracted(None, "no class ModelNew in the code", len(complete))
    chosen = candidates[-1]
    where = f"block {found.index(chosen) + 1} of {len(found)}"
    try:
        tree = ast.parse(chosen.text)
    except SyntaxError as e:
        return Extracted(None, _syntax_error(e), len(complete))
    if not _defines_modelnew(tree):
        return Extracted(None, "no class ModelNew in the code", len(complete))

    source, notes = chosen.text, []
    for name in sorted(_undefined_source_names(tree)):
        kernel = _kernel_block(complete, SOURCE_NAMES[name])
        if kernel is None and unclosed:
            return Extracted(None, "truncated: unclosed code fence", len(complete))
        if kernel is None:
            return Extracted(None, f"{name} is used but not defined, and there is no "
                                   f"```{'cuda' if name == 'CUDA_SOURCE' else 'cpp'} block", len(complete))
        source = _prepend(source, tree, f"{name} = {_literal(kernel.text)}\n")
        tree = ast.parse(source)
        notes.append(f"{name} from block {found.index(kernel) + 1}")
    return Extracted(source, "python " + where + "".join(f", {n}" for n in notes), len(complete))


def _unfenced(text: str) -> Extracted:
    """No fence at all: accept an answer that is nothing but the Python file."""
    if _MODELNEW.search(text):
        try:
            tree = ast.parse(text)
        except SyntaxError:
            return Extracted(None, "no fenced code block", 0)
        if _defines_modelnew(tree):
            return Extracted(text if text.endswith("\n") else text + "\n", "unfenced python", 0)
    return Extracted(None, "no fenced code block", 0)


def _undefined_source_names(tree: ast.Module) -> set[str]:
    used: set[str] = set()
    bound: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Name) and node.id in SOURCE_NAMES:
            (used if isinstance(node.ctx, ast.Load) else bound).add(node.id)
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            bound.update(a.asname or a.name.split(".")[0] for a in node.names)
        elif isinstance(node, ast.arg):
            bound.add(node.arg)
    return used - bound


def _kernel_block(complete: list[Block], tags: set[str]) -> Block | None:
    """The last block with one of the tags; else the last C++/CUDA block (CUDA is often tagged cpp)."""
    for wanted in (tags, CPP_TAGS | CUDA_TAGS):
        matching = [b for b in complete if b.tag in wanted]
        if matching:
            return matching[-1]
    return None


def _literal(text: str) -> str:
    """A Python literal for the source: a raw triple-quoted string when that reads back exactly."""
    for quote in ("'''", '"""'):
        literal = f"r{quote}{text}{quote}"
        try:
            if ast.literal_eval(literal) == text:
                return literal
        except (SyntaxError, ValueError):
            pass
    return repr(text)


def _prepend(source: str, tree: ast.Module, line: str) -> str:
    """Put the line at the top, but after a docstring and `from __future__` imports (which must come first)."""
    after = 0
    for i, node in enumerate(tree.body):
        docstring = i == 0 and isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant) \
            and isinstance(node.value.value, str)
        if docstring or (isinstance(node, ast.ImportFrom) and node.module == "__future__"):
            after = node.end_lineno or after
        else:
            break
    lines = source.splitlines(keepends=True)
    return "".join(lines[:after]) + line + "".join(lines[after:])
