"""What a candidate's build may ask of the supervisor's machine, checked before the compiler runs.

Fast-path libraries and load_inline extensions are compiled by the supervisor, outside any
sandbox, over candidate source and flags. The compiler reads files: an `#include
"/root/.ssh/id_rsa"` quotes the file back in its error messages (into the verdict, the store and
the next prompt), and an assembler `.incbin` copies a file into the library the worker loads.
So a build may include only by a literal name that stays inside the include search path (no
absolute path, no `..`, no computed `#include MACRO`), may not use `.incbin`/`.include` or
`#embed`, and may not add search paths, forced includes, plugins, specs or outputs by flag.
"""
from __future__ import annotations

import re

_DIRECTIVE = re.compile(r"^[ \t]*#[ \t]*(include_next|include|import|embed)\b[ \t]*(.*)$", re.MULTILINE)
_LITERAL = re.compile(r'^(<[^<>"\n]+>|"[^"\n]+")')
_HAS_INCLUDE = re.compile(r"__has_include(?:_next)?\s*\(\s*([^)]*)\)")
_ASM_FILE = re.compile(r"\.(incbin|include)\b", re.IGNORECASE)
# flags (or a piece of one: -Xcompiler=-I/x, -Wl,@file) a candidate may not pass
_BANNED_FLAGS = ("-o", "-B", "-wrapper", "-fplugin", "-specs", "--output", "-save-temps", "-M", "@", "-I", "-isystem",
                 "-iquote", "-idirafter", "-iprefix", "-iwithprefix", "-isysroot", "--sysroot", "-include", "-imacros",
                 "--include", "--pre-include", "-L", "--library-path", "-T", "--script", "-x")


def _logical(text: str) -> str:
    """The source as the preprocessor sees its lines: continuations joined, digraph `%:` as `#`."""
    return text.replace("\\\r\n", "").replace("\\\n", "").replace("%:", "#").replace("??=", "#")


def _name_problem(name: str) -> str | None:
    path = name[1:-1].strip()
    if path.startswith(("/", "~")) or ".." in path.replace("\\", "/").split("/"):
        return f"include of {name} (only names inside the include path)"
    return None


def source_problem(*sources: str) -> str | None:
    """Why these sources may not be compiled here (one line), or None."""
    for source in sources:
        text = _logical(source)
        for m in _DIRECTIVE.finditer(text):
            kind, rest = m.group(1), m.group(2).strip()
            if kind == "embed":
                return "#embed is not allowed (it reads a file of the build machine)"
            lit = _LITERAL.match(rest)
            if not lit:
                return f"#{kind} {rest[:60]}: only a literal <name> or \"name\" may be included"
            why = _name_problem(lit.group(1))
            if why:
                return why
        for m in _HAS_INCLUDE.finditer(text):
            arg = m.group(1).strip()
            probe = _LITERAL.match(arg)
            why = _name_problem(probe.group(1)) if probe else f"__has_include({arg[:60]}): only a literal name"
            if why:
                return why
        asm = _ASM_FILE.search(text)
        if asm:
            return f"assembler .{asm.group(1).lower()} is not allowed (it reads a file of the build machine)"
    return None


def flag_problem(flags: tuple[str, ...] | list[str]) -> str | None:
    """The first flag a candidate may not pass, as a one-line reason, or None."""
    for flag in flags:
        if "\n" in flag or "\0" in flag:
            return f"compiler flag not allowed: {flag!r}"
        for piece in re.split(r"[=,]", flag):
            piece = piece.strip()
            if any(piece == b or piece.startswith(b) for b in _BANNED_FLAGS):
                return f"compiler flag not allowed: {flag}"
    return None
