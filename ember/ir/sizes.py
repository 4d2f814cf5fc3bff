"""Size expressions without sympy: the dims of a program loaded from an artifact.

ember's passes and codegen reason about symbolic dims with sympy (`types.py`). A loaded
program only evaluates them, and importing sympy took ~0.4 s of the ~0.85 s that loading
MiniLM's artifact and running it once took from process start. So the artifact codec
decodes a size expression to a `Size`: a small immutable tree that answers what the
runtime asks of a dim as a sympy expression does (`is_Symbol`, `is_Integer`, `name`,
`args`, `free_symbols`, equality and hashing, printing), and becomes the sympy
expression on `to_sympy()` where something needs one.

`size_function(expr, index)` turns a dim of either kind into a function of the size
symbols' values, exactly (integers and fractions, no floats): what the executor and the
feed checks evaluate shapes with.
"""

from __future__ import annotations

import math
from fractions import Fraction
from typing import Any, Callable

FUNCTIONS = ("Add", "Mul", "Pow", "floor", "ceiling", "Mod", "Max", "Min", "Abs")
CONSTANTS = ("oo", "-oo", "nan", "true", "false")
_ARITY = {"Pow": (2, 2), "floor": (1, 1), "ceiling": (1, 1), "Abs": (1, 1), "Mod": (2, 2)}
MAX_EXPONENT = 64


class Size:
    """A size expression: `Size.symbol("seq", {"integer": True, "positive": True})`,
    `Size.rational(1, 2)`, `Size("Add", (1, seq))`, `Size("floor", (x,))`. Integers are
    plain ints, never a Size."""

    __slots__ = ("head", "args", "_hash", "_free")

    def __init__(self, head: str, args: tuple = ()):
        object.__setattr__(self, "head", head)
        object.__setattr__(self, "args", tuple(args))
        object.__setattr__(self, "_hash", hash((head, self.args)))
        object.__setattr__(self, "_free", None)

    def __setattr__(self, name, value):
        raise AttributeError("a Size is immutable")

    def __reduce__(self):  # (copy and pickle: rebuilt from its parts, not by setting slots)
        return (Size, (self.head, self.args))

    @classmethod
    def symbol(cls, name: str, assumptions: dict[str, bool]) -> Size:
        return cls("Symbol", (name, tuple(sorted(assumptions.items()))))

    @classmethod
    def rational(cls, p: int, q: int) -> int | Size:
        g = math.gcd(p, q) or 1
        p, q = p // g, q // g
        return p if q == 1 else cls("Rational", (p, q))

    # -- what the runtime asks of a dim (as of a sympy expression) --------------------------
    is_Integer = False

    @property
    def is_Symbol(self) -> bool:
        return self.head == "Symbol"

    @property
    def is_Rational(self) -> bool:
        return self.head == "Rational"

    @property
    def is_Add(self) -> bool:
        return self.head == "Add"

    @property
    def is_Mul(self) -> bool:
        return self.head == "Mul"

    @property
    def name(self) -> str:
        if self.head != "Symbol":
            raise AttributeError(f"{self} is not a symbol")
        return self.args[0]

    @property
    def assumptions(self) -> dict[str, bool]:
        return dict(self.args[1]) if self.head == "Symbol" else {}

    @property
    def free_symbols(self) -> frozenset:
        if self._free is None:
            free = frozenset([self]) if self.head == "Symbol" else frozenset().union(
                *(a.free_symbols for a in self.args if isinstance(a, Size)))
            object.__setattr__(self, "_free", free)
        return self._free

    def __eq__(self, other) -> bool:
        return isinstance(other, Size) and self._hash == other._hash and self.head == other.head \
            and self.args == other.args

    def __hash__(self) -> int:
        return self._hash

    def __repr__(self) -> str:  # as sympy's: the printed form
        return str(self)

    def __str__(self) -> str:
        head, args = self.head, self.args
        if head == "Symbol":
            return args[0]
        if head == "Rational":
            return f"{args[0]}/{args[1]}"
        if head in CONSTANTS:
            return head
        if head == "Add":
            numbers = [a for a in args if type(a) is int or isinstance(a, Size) and a.is_Rational]
            text = ""
            for a in [*(a for a in args if a not in numbers), *numbers]:
                s = str(a)
                text += s if not text else f" - {s[1:]}" if s.startswith("-") else f" + {s}"
            return text
        if head == "Mul":
            coeff = [a for a in args if type(a) is int or isinstance(a, Size) and a.is_Rational]
            rest = "*".join(_factor(a) for a in args if a not in coeff)
            if len(coeff) != 1 or not rest:
                return "*".join(_factor(a) for a in args)
            c = coeff[0]
            p, q = (c, 1) if type(c) is int else c.args
            text = rest if abs(p) == 1 else f"{abs(p)}*{rest}"
            return ("-" if p < 0 else "") + (text if q == 1 else f"{text}/{q}")
        if head == "Pow":
            base, exp = args
            base = f"({base})" if isinstance(base, Size) and base.head in ("Add", "Mul", "Pow", "Rational") else base
            return f"{base}**{exp}"
        return f"{head}({', '.join(map(str, args))})"

    # -- the other forms ------------------------------------------------------------------
    def to_sympy(self):
        from .._deferred import sympy

        head, args = self.head, self.args
        if head == "Symbol":
            return sympy.Symbol(args[0], **dict(args[1]))
        if head == "Rational":
            return sympy.Rational(*args)
        if head in CONSTANTS:
            return {"oo": sympy.oo, "-oo": -sympy.oo, "nan": sympy.nan, "true": sympy.true,
                    "false": sympy.false}[head]
        return getattr(sympy, head)(*(to_sympy(a) for a in args))  # FUNCTIONS are sympy's names


def _factor(a: Any) -> str:
    """`a` printed as a factor of a product (sympy's parentheses: around sums and Mod)."""
    return f"({a})" if isinstance(a, Size) and a.head in ("Add", "Mod") else str(a)


def to_sympy(d: Any):
    """`d` as sympy (ints as sympy Integers); a sympy expression as it is."""
    if isinstance(d, Size):
        return d.to_sympy()
    if type(d) is int:
        from .._deferred import sympy

        return sympy.Integer(d)
    return d


def is_symbol(d: Any) -> bool:
    """Whether the dim `d` (an int, a Size or a sympy expression) is a bare symbol."""
    return type(d) is not int and getattr(d, "is_Symbol", False) is True


def free_symbols(d: Any) -> frozenset:
    return frozenset() if type(d) is int else frozenset(getattr(d, "free_symbols", ()))


def _head(e: Any) -> str:
    return e.head if isinstance(e, Size) else type(e).__name__


def size_function(expr: Any, index: dict) -> Callable[[list], Any] | None:
    """`expr` (an int, a Size or a sympy expression) as a function of the symbols' values
    (a list, `index` giving each symbol's position), exact: integers, and fractions where
    it divides. None where `expr` holds a symbol not in `index` or a function this does
    not evaluate (then sympy's lambdify does, for a sympy expression)."""
    if type(expr) is int:
        return lambda values: expr
    if getattr(expr, "is_Integer", False):
        value = int(expr)
        return lambda values: value
    if getattr(expr, "is_Symbol", False):
        i = index.get(expr)
        return None if i is None else lambda values: values[i]
    if getattr(expr, "is_Rational", False):
        p, q = (expr.args if isinstance(expr, Size) else (int(expr.p), int(expr.q)))
        value = Fraction(p, q)
        return lambda values: value
    head = _head(expr)
    if head not in FUNCTIONS:
        return None
    terms = [size_function(a, index) for a in expr.args]
    if any(t is None for t in terms):
        return None
    if head == "Add":
        return lambda values: sum(t(values) for t in terms)
    if head == "Mul":
        return lambda values: math.prod(t(values) for t in terms)
    if head == "Pow":
        base, exponent = terms
        return lambda values: Fraction(base(values)) ** exponent(values)
    if head in ("Max", "Min"):
        pick = max if head == "Max" else min
        return lambda values: pick(t(values) for t in terms)
    if head == "Mod":
        a, b = terms
        return lambda values: a(values) % b(values)  # sympy's Mod: the sign of the divisor, as Python's %
    one = terms[0]
    fn = {"floor": math.floor, "ceiling": math.ceil, "Abs": abs}[head]
    return lambda values: fn(one(values))


def evaluate(expr: Any, values: dict) -> int:
    """The int value of the dim `expr` with its symbols set by `values` (symbol -> int)."""
    symbols = list(values)
    fn = size_function(expr, {s: i for i, s in enumerate(symbols)})
    if fn is None:
        return int(to_sympy(expr).subs({to_sympy(s): v for s, v in values.items()}))
    return int(fn([values[s] for s in symbols]))


# -- the artifact's form: ["Add", 1, ["S", "seq", {...}]] (artifact/codec.py) --------------------
def from_tree(tree: Any, depth: int = 0, *, max_depth: int = 200) -> int | Size:
    """A size expression from its JSON tree; ValueError, naming what is wrong, for one
    ember does not write."""
    if depth > max_depth:
        raise ValueError("a size expression nests too deeply")
    if type(tree) is int:
        return tree
    if not isinstance(tree, list) or not tree or not isinstance(tree[0], str):
        raise ValueError(f"bad size expression {str(tree)[:100]}")
    head, args = tree[0], tree[1:]
    if head == "S" and len(args) == 2 and isinstance(args[0], str) and isinstance(args[1], dict):
        if not all(isinstance(k, str) and isinstance(v, bool) for k, v in args[1].items()):
            raise ValueError(f"symbol {args[0]!r}: bad assumptions {str(args[1])[:100]}")
        return Size.symbol(args[0], args[1])
    if head == "Q" and len(args) == 2 and all(type(a) is int for a in args) and args[1] > 0:
        return Size.rational(args[0], args[1])
    if head in CONSTANTS and not args:
        return Size(head)
    if head in FUNCTIONS and args:
        lo, hi = _ARITY.get(head, (1, None))
        if len(args) < lo or hi is not None and len(args) > hi:
            raise ValueError(f"bad size expression {str(tree)[:100]}: {head} of {len(args)} arguments")
        values = tuple(from_tree(a, depth + 1, max_depth=max_depth) for a in args)
        if head == "Pow" and not (type(values[1]) is int and abs(values[1]) <= MAX_EXPONENT):
            raise ValueError(f"a power {str(tree)[:100]}: only integer exponents up to {MAX_EXPONENT}")
        return Size(head, values)
    raise ValueError(f"bad size expression {str(tree)[:100]}: {head!r} is not one ember writes")


def to_tree(d: int | Size) -> Any:
    if type(d) is int:
        return d
    if d.head == "Symbol":
        return ["S", d.args[0], dict(d.args[1])]
    if d.head == "Rational":
        return ["Q", *d.args]
    return [d.head, *(to_tree(a) for a in d.args)]
