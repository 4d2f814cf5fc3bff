"""Splitting a pointwise kernel's innermost loop where its selects change arm.

A Concat along the innermost axis (the channels of channels-last activations) or a Pad of
it is lowered as one loop with a select per element: `x3 < 48 ? a : b`, each arm reading
its input at a clamped index (`min(47, max(0, x3 - 48))`) so that neither reads out of
bounds. gcc turns those clamped reads into gathers it does not vectorize, and the whole
loop runs scalar (PP-OCRv6 det's stem Concat: 1.2 ms a run; a 4-way Concat in its neck
another 1.2 ms). Over each range where every such condition is constant the select is
one of its arms and the clamps are the identity: `split_inner` finds the ranges, and for
each gives the body with the conditions folded, the selects resolved, the clamps
dropped and what no longer feeds a store removed. Each range is a loop of plain
contiguous reads that gcc vectorizes.
"""

from __future__ import annotations

import dataclasses

from .._deferred import sympy
from ..ir.dtypes import DType
from ..ir.kernel import Body, Stmt, loop_vars, temp_symbol

MAX_PIECES = 8
_COMPARE = {"lt": lambda a, b: a < b, "le": lambda a, b: a <= b, "gt": lambda a, b: a > b,
            "ge": lambda a, b: a >= b, "eq": lambda a, b: a == b, "ne": lambda a, b: a != b}
_LOGIC = {"and": lambda a, b: a and b, "or": lambda a, b: a or b}


def _affine(expr, var: sympy.Symbol) -> tuple[int, int] | None:
    """(a, b) where `expr` is a * var + b with integers a, b; None otherwise."""
    expr = sympy.sympify(expr)
    if expr.free_symbols - {var}:
        return None
    if not expr.free_symbols:
        return (0, int(expr)) if expr.is_Integer else None
    try:
        poly = sympy.Poly(expr, var)
    except sympy.PolynomialError:  # a clamp (Min/Max), a floor division...
        return None
    if poly.degree() > 1 or not all(c.is_Integer for c in poly.all_coeffs()):
        return None
    coeffs = [int(c) for c in poly.all_coeffs()]
    return (coeffs[0], coeffs[1]) if len(coeffs) == 2 else (0, coeffs[0])


def _conditions(body: Body, var: sympy.Symbol) -> dict[str, tuple]:
    """Comparisons of an index affine in `var` with a constant (either side; an integer
    constant or an index without `var`): temp -> (op, (a, b) of the index, the constant,
    whether the index is on the left)."""
    affine = {s.out: _affine(s.args[0], var) for s in body.stmts if s.op == "index"}
    affine.update({s.out: (0, int(s.args[0])) for s in body.stmts
                   if s.op == "const" and s.dtype is not None and s.dtype.is_integer})
    found = {}
    for s in body.stmts:
        if s.op not in _COMPARE:
            continue
        a, b = (affine.get(arg) for arg in s.args)
        if a is None or b is None or (a[0] == 0) == (b[0] == 0):
            continue
        if a[0]:
            found[s.out] = (s.op, a, b[1], True)
        else:
            found[s.out] = (s.op, b, a[1], False)
    return found


def _truth(cond: tuple, value: int) -> bool:
    op, (a, b), const, left = cond
    x = a * value + b
    return _COMPARE[op](x, const) if left else _COMPARE[op](const, x)


def _boundaries(conds: dict, start: int, stop: int) -> list[int]:
    """Where some condition's truth changes inside [start, stop): each is monotone in the
    loop variable (affine), so it flips at most once, next to its threshold."""
    points = set()
    for cond in conds.values():
        _, (a, b), const, _ = cond
        # the flip is within one step of where a * v + b crosses const
        centre = (const - b) // a if a else 0
        for p in range(centre - 1, centre + 3):
            if start < p < stop and _truth(cond, p - 1) != _truth(cond, p):
                points.add(p)
    return sorted(points)


def _unclamped(expr, var: sympy.Symbol, start: int, stop: int):
    """`expr` with each Min/Max of expressions affine in `var` replaced by the argument
    that is the min/max over the whole of [start, stop) (affine: checked at both ends)."""
    if not isinstance(expr, sympy.Basic) or var not in expr.free_symbols:
        return expr
    if isinstance(expr, (sympy.Min, sympy.Max)):
        args = [_unclamped(a, var, start, stop) for a in expr.args]
        pick = min if isinstance(expr, sympy.Min) else max
        ends = [[a.subs(var, v) for a in args] for v in (start, stop - 1)]
        if all(all(e.is_Integer for e in row) for row in ends):
            for i in range(len(args)):
                if all(row[i] == pick(row) for row in ends) and _affine(args[i], var) is not None:
                    return args[i]
        return expr.func(*args)
    if expr.args:
        return expr.func(*[_unclamped(a, var, start, stop) for a in expr.args])
    return expr


def _temps_in(expr) -> set[str]:
    return {s.name[1:] for s in sympy.sympify(expr).free_symbols if s.name.startswith("$t")}


def _piece(body: Body, conds: dict, var: sympy.Symbol, start: int, stop: int) -> Body:
    """`body` over [start, stop): conditions constant there folded, selects on them
    resolved, clamps on `var` dropped, dead statements removed."""
    known: dict[str, bool] = {}
    alias: dict[str, str] = {}
    stmts = []
    for s in body.stmts:
        args = tuple(alias.get(a, a) if isinstance(a, str) else a for a in s.args)
        if s.out in conds:
            lo, hi = _truth(conds[s.out], start), _truth(conds[s.out], stop - 1)
            if lo == hi:
                known[s.out] = lo
                stmts.append(Stmt(s.out, "const", (lo,), DType.bool))
                continue
        if s.op in _LOGIC and all(a in known for a in args):
            known[s.out] = _LOGIC[s.op](known[args[0]], known[args[1]])
            stmts.append(Stmt(s.out, "const", (known[s.out],), DType.bool))
            continue
        if s.op == "not" and args[0] in known:
            known[s.out] = not known[args[0]]
            stmts.append(Stmt(s.out, "const", (known[s.out],), DType.bool))
            continue
        if s.op == "where" and args[0] in known:
            alias[s.out] = args[1] if known[args[0]] else args[2]
            continue
        if s.op == "index":
            args = (_unclamped(args[0], var, start, stop),)
        elif s.op in ("load", "store"):
            offset = args[1]
            renamed = {sym: temp_symbol(alias[sym.name[1:]]) for sym in offset.free_symbols if sym.name[1:] in alias}
            args = (args[0], _unclamped(offset.xreplace(renamed) if renamed else offset, var, start, stop), *args[2:])
        stmts.append(dataclasses.replace(s, args=args))
    # drop what feeds no store (the arm not taken, the folded conditions)
    live: set[str] = set()
    kept = []
    for s in reversed(stmts):
        if s.op != "store" and s.out not in live:
            continue
        kept.append(s)
        for a in s.args:
            if isinstance(a, str):
                live.add(a)
            elif isinstance(a, sympy.Basic):
                live |= _temps_in(a)
    piece = Body()
    piece.dtypes = body.dtypes
    piece.stmts = kept[::-1]
    return piece


def split_inner(body: Body, rank: int, extent, which: int | None = None) -> list[tuple[int, int, Body]] | None:
    """The vectorized one of `rank` loops (the innermost, or the one at `which`), over
    [0, extent), as ranges (start, stop, body), or None where no select changes arm
    inside it (or its extent is not a number)."""
    if not isinstance(extent, (int, sympy.Integer)):
        return None
    pieces = _split(body, loop_vars(rank)[-1 if which is None else which], 0, int(extent), [MAX_PIECES])
    return pieces if len(pieces) > 1 else None


def _split(body: Body, var, start: int, stop: int, budget: list[int]) -> list[tuple[int, int, Body]]:
    """[start, stop) as ranges with every condition folded: a range's body can show
    conditions of its own once its clamps are gone (a Pad of a Concat compares the
    Concat's index, clamped by the Pad), so each range is split again."""
    conds = _conditions(body, var)
    points = _boundaries(conds, start, stop)
    if not points or len(points) + 1 > budget[0]:
        return [(start, stop, body)]
    budget[0] -= len(points)
    edges = [start, *points, stop]
    pieces = []
    for a, b in zip(edges, edges[1:]):
        pieces += _split(_piece(body, conds, var, a, b), var, a, b, budget)
    return pieces
