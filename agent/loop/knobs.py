"""Knobs: the tunable parameters a candidate declares, read and rewritten without running it.

Module-level constants (`BLOCK = 64`) are the knobs; `KNOBS = {"BLOCK": [32, 64, 128]}` lists
their allowed values and `KNOB_CONSTRAINTS = ["BLOCK * UNROLL <= 256"]` rules combinations out.
The source is untrusted and never executed: everything here reads it with `ast`, and
constraints run in a small interpreter that knows only names, numbers, strings, arithmetic,
comparisons and and/or/not.
"""
from __future__ import annotations

import ast
import dataclasses
import itertools
import operator
from typing import Any, Callable, Iterator, Mapping

Value = int | float | str | bool

_BINOPS: dict[type, Callable[[Any, Any], Any]] = {ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul, ast.Div: operator.truediv,
           ast.FloorDiv: operator.floordiv, ast.Mod: operator.mod, ast.Pow: operator.pow}
_CMPOPS = {ast.Eq: operator.eq, ast.NotEq: operator.ne, ast.Lt: operator.lt, ast.LtE: operator.le,
           ast.Gt: operator.gt, ast.GtE: operator.ge}
_UNARY: dict[type, Callable[[Any], Any]] = {ast.USub: operator.neg, ast.UAdd: operator.pos, ast.Not: operator.not_}


def _check_expr(node: ast.AST, names: set[str], text: str) -> None:
    """Raise ValueError unless the expression uses only the allowed node kinds and knob names."""
    for sub in ast.walk(node):
        if isinstance(sub, ast.Name):
            if sub.id not in names:
                raise ValueError(f"knob constraint {text!r} uses {sub.id!r}, which is not a knob")
        elif isinstance(sub, ast.Constant):
            if not isinstance(sub.value, (int, float, bool, str)):
                raise ValueError(f"knob constraint {text!r} has a constant that is not a number or string")
        elif not isinstance(sub, (ast.Expression, ast.BinOp, ast.UnaryOp, ast.BoolOp, ast.Compare, ast.Load,
                                  ast.And, ast.Or, *_BINOPS, *_CMPOPS, *_UNARY)):
            raise ValueError(f"knob constraint {text!r} uses {type(sub).__name__}, which is not allowed")


def _eval(node: ast.AST, env: Mapping[str, Value]) -> Any:
    if isinstance(node, ast.Expression):
        return _eval(node.body, env)
    if isinstance(node, (ast.Constant, ast.Name)):
        return node.value if isinstance(node, ast.Constant) else env[node.id]
    if isinstance(node, ast.BinOp):
        left, right = _eval(node.left, env), _eval(node.right, env)
        if isinstance(left, str) or isinstance(right, str):
            raise ValueError("arithmetic on strings in a knob constraint")
        if isinstance(node.op, ast.Pow) and abs(right) > 64:
            raise ValueError("exponent too large in a knob constraint")
        return _BINOPS[type(node.op)](left, right)
    if isinstance(node, ast.UnaryOp):
        return _UNARY[type(node.op)](_eval(node.operand, env))
    if isinstance(node, ast.BoolOp):
        values = (_eval(v, env) for v in node.values)
        return all(values) if isinstance(node.op, ast.And) else any(values)
    if isinstance(node, ast.Compare):
        vals = [_eval(node.left, env), *(_eval(c, env) for c in node.comparators)]
        return all(_CMPOPS[type(op)](a, b) for op, a, b in zip(node.ops, vals, vals[1:]))
    raise ValueError(f"unsupported expression {type(node).__name__}")


@dataclasses.dataclass(frozen=True)
class KnobSpace:
    knobs: tuple[tuple[str, tuple[Value, ...]], ...]  # (name, allowed values), in declaration order
    constraints: tuple[str, ...] = ()

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(name for name, _ in self.knobs)

    def values(self, name: str) -> tuple[Value, ...]:
        return dict(self.knobs)[name]

    def _trees(self) -> list[ast.Expression]:
        return [ast.parse(c, mode="eval") for c in self.constraints]

    @staticmethod
    def _satisfied(config: Mapping[str, Value], trees: list[ast.Expression]) -> bool:
        try:  # a constraint that cannot be evaluated for a config (1 / 0, a type error) rules it out
            return all(bool(_eval(t, config)) for t in trees)
        except (ArithmeticError, TypeError, ValueError):
            return False

    def violation(self, config: Mapping[str, Value]) -> str | None:
        """Why a configuration is invalid (one line), or None when it is valid."""
        allowed = dict(self.knobs)
        for name, value in config.items():
            if name not in allowed:
                return f"unknown knob {name!r} (knobs: {', '.join(self.names)})"
            if not any(type(value) is type(v) and value == v for v in allowed[name]):
                return f"knob {name}={value!r} is not one of {list(allowed[name])}"
        missing = [n for n in self.names if n not in config]
        if missing:
            return f"configuration lacks knob(s) {', '.join(missing)}"
        for text, tree in zip(self.constraints, self._trees()):
            if not self._satisfied(config, [tree]):
                return f"configuration violates knob constraint {text!r}"
        return None

    def is_valid(self, config: Mapping[str, Value]) -> bool:
        return self.violation(config) is None

    def configs(self) -> Iterator[dict[str, Value]]:
        """Every valid configuration, in declaration order of knobs and values."""
        trees = self._trees()
        for combo in itertools.product(*(vals for _, vals in self.knobs)):
            config = dict(zip(self.names, combo))
            if self._satisfied(config, trees):
                yield config

    @property
    def size(self) -> int:  # the number of valid configurations
        return sum(1 for _ in self.configs())


def _module_constants(tree: ast.Module) -> dict[str, ast.Assign]:
    return {node.targets[0].id: node for node in tree.body  # the last assignment wins, as at run time
            if isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name)}


def _literal(node: ast.AST, what: str) -> Value:
    try:
        value = ast.literal_eval(node)
    except (ValueError, SyntaxError):
        raise ValueError(f"{what} is not a literal") from None
    if not isinstance(value, (int, float, str, bool)):
        raise ValueError(f"{what} must be an int, float, str or bool, got {type(value).__name__}")
    return value


def read_space(source: str) -> KnobSpace | None:
    """The knob space a source declares; None when it declares no KNOBS. ValueError if malformed."""
    tree = ast.parse(source)
    consts = _module_constants(tree)
    if "KNOBS" not in consts:
        return None
    decl = consts["KNOBS"].value
    if not isinstance(decl, ast.Dict) or any(k is None for k in decl.keys):
        raise ValueError("KNOBS must be a literal dict of name -> list of values")
    knobs: list[Any] = []
    for key, vals in zip(decl.keys, decl.values):
        assert key is not None  # checked above
        name = _literal(key, "a KNOBS key")
        if not isinstance(name, str) or not name.isidentifier():
            raise ValueError(f"KNOBS key {name!r} is not a name")
        if name not in consts or any(n == name for n, _ in knobs):
            raise ValueError(f"knob {name} is declared twice" if name in consts else
                             f"knob {name} has no module-level constant {name} = ...")
        if not isinstance(vals, (ast.List, ast.Tuple)) or not vals.elts:
            raise ValueError(f"KNOBS[{name!r}] must be a non-empty list of values")
        knobs.append((name, tuple(_literal(v, f"a value of knob {name}") for v in vals.elts)))
        _literal(consts[name].value, f"the constant {name}")
    names = {n for n, _ in knobs}
    constraints: tuple[str, ...] = ()
    if "KNOB_CONSTRAINTS" in consts:
        try:
            raw = ast.literal_eval(consts["KNOB_CONSTRAINTS"].value)
        except ValueError:
            raise ValueError("KNOB_CONSTRAINTS must be a literal list of strings") from None
        if not isinstance(raw, (list, tuple)) or not all(isinstance(c, str) for c in raw):
            raise ValueError("KNOB_CONSTRAINTS must be a literal list of strings")
        for text in raw:
            try:
                parsed = ast.parse(text, mode="eval")
            except SyntaxError:
                raise ValueError(f"knob constraint {text!r} does not parse") from None
            _check_expr(parsed, names, text)
        constraints = tuple(raw)
    return KnobSpace(tuple(knobs), constraints)


def current(source: str) -> dict[str, Value]:
    """The values the knob constants have in this source ({} without KNOBS)."""
    space = read_space(source)
    if space is None:
        return {}
    consts = _module_constants(ast.parse(source))
    return {name: _literal(consts[name].value, f"the constant {name}") for name in space.names}


def instantiate(source: str, config: Mapping[str, Value]) -> str:
    """The source with the knobs' module-level assignments set to `config` (others untouched)."""
    space = read_space(source)
    if space is None:
        raise ValueError("the source declares no KNOBS")
    now = current(source)
    full = {**now, **config}
    if problem := space.violation(full):
        raise ValueError(problem)
    consts = _module_constants(ast.parse(source))
    lines = [ln.encode() for ln in source.splitlines(keepends=True)]  # ast offsets count UTF-8 bytes
    changed = [n for n in space.names if type(now[n]) is not type(full[n]) or now[n] != full[n]]
    # rewrite from the end so that earlier offsets stay valid; unchanged lines stay verbatim
    for name in sorted(changed, key=lambda n: (consts[n].lineno, consts[n].col_offset), reverse=True):
        node = consts[name]
        first, last = node.lineno - 1, (node.end_lineno or node.lineno) - 1
        head, tail = lines[first][:node.col_offset], lines[last][node.end_col_offset:]
        lines[first:last + 1] = [head + f"{name} = {full[name]!r}".encode() + tail]
    return b"".join(lines).decode()
