"""Index expressions (sympy, over loop variables, SSA temps and size symbols) as source
text: one walk of the expression for every renderer, each saying how the pieces are
spelt (cpu.py's int64 C++, triton.py's Triton and Python)."""

from __future__ import annotations

from .._deferred import sympy


class IndexPrinter:
    """Renders index expressions; `symbols` maps each size symbol to its position (rendered
    `s<i>`, and recorded in `used`). A subclass spells integers, loop variables and temps
    (`variable`: the name without its `$`), floor division, Python's modulo, abs and
    max/min, and the error for what it cannot render."""

    error: type[Exception] = ValueError

    def __init__(self, symbols: dict):
        self.symbols = symbols
        self.used: set[int] = set()

    def __call__(self, e) -> str:
        e = sympy.sympify(e)
        if e.is_Integer:
            return self.integer(int(e))
        if e.is_Symbol:
            if e.name.startswith("$"):
                return self.variable(e.name[1:])
            if e not in self.symbols:
                raise self.error(f"size {e} is not bound by any input")
            self.used.add(self.symbols[e])
            return f"s{self.symbols[e]}"
        if e.is_Add:
            return "(" + " + ".join(self(a) for a in e.args) + ")"
        if e.is_Mul:
            num, den = sympy.fraction(e)
            if den != 1:
                return self.floordiv(num, den)
            return "(" + " * ".join(self(a) for a in e.args) + ")"
        if isinstance(e, sympy.floor):
            num, den = sympy.fraction(sympy.together(e.args[0]))
            return self.floordiv(num, den)
        if isinstance(e, sympy.ceiling):  # ceil(n/d) = -floor(-n/d)
            num, den = sympy.fraction(sympy.together(e.args[0]))
            return f"(-{self.floordiv(-num, den)})"
        if isinstance(e, sympy.Abs):
            return self.abs(self(e.args[0]))
        if isinstance(e, sympy.Mod):
            return self.mod(e.args[0], e.args[1])
        if isinstance(e, (sympy.Max, sympy.Min)):
            out = self(e.args[0])
            for a in e.args[1:]:
                out = self.extreme(isinstance(e, sympy.Max), out, self(a))
            return out
        if e.is_Pow and e.exp.is_Integer and e.exp > 0:
            return "(" + " * ".join([self(e.base)] * int(e.exp)) + ")"
        raise self.error(f"cannot render index expression {e}")

    # -- the spelling ----------------------------------------------------------------------
    def integer(self, value: int) -> str:
        return str(value)

    def variable(self, name: str) -> str:
        raise NotImplementedError

    def floordiv(self, num, den) -> str:  # (sympy expressions: render them with self)
        raise NotImplementedError

    def mod(self, a, b) -> str:
        raise NotImplementedError

    def abs(self, a: str) -> str:
        raise NotImplementedError

    def extreme(self, is_max: bool, a: str, b: str) -> str:
        raise NotImplementedError
