"""ember.ir.sizes: the sympy-free size expressions a loaded program's shapes are. Saved
from sympy and decoded, they evaluate to sympy's value at every size, print as a dim
expression that reads back as the same one (in sympy's own order, mostly), and turn back
into the same sympy expression; `size_function` evaluates sympy
dims exactly too (the executor's shape functions for compiled programs)."""

from __future__ import annotations

import copy
import pickle

import sympy
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from ember.artifact import codec
from ember.ir import sizes, symbol
from ember.ir.sizes import Size
from ember.ir.types import parse_dim_expr

N, H, W = symbol("n"), symbol("h"), symbol("w")


@st.composite
def dims(draw, depth: int = 0):
    """A dim as ember's shape functions make them: symbols, integers, sums, products,
    halvings (stride), floor, ceiling, Mod, Max, Min, small powers."""
    if depth >= 3 or draw(st.integers(0, 3)) == 0:
        return draw(st.sampled_from([N, H, W, sympy.Integer(draw(st.integers(1, 9)))]))
    kind = draw(st.sampled_from(["Add", "Mul", "half", "floor", "ceiling", "Mod", "Max", "Min", "Pow"]))
    a, b = draw(dims(depth + 1)), draw(dims(depth + 1))
    event(f"built {kind}")
    return {"Add": lambda: a + b - draw(st.integers(0, 2)), "Mul": lambda: a * b,
            "half": lambda: (a - 1) / 2 + sympy.Rational(1, 3), "floor": lambda: sympy.floor(a / 2 - sympy.Rational(1, 2)),
            "ceiling": lambda: sympy.ceiling(a / 3), "Mod": lambda: sympy.Mod(a, sympy.Max(b, 1)),
            "Max": lambda: sympy.Max(a, b, 2), "Min": lambda: sympy.Min(a, b),
            "Pow": lambda: a ** draw(st.integers(-2, 3))}[kind]()


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(dims(), st.tuples(st.integers(1, 40), st.integers(1, 40), st.integers(1, 40)))
def test_a_decoded_size_is_the_sympy_expression(expr, values):
    decoded = codec.decode_expr(codec.encode_expr(expr))
    at = dict(zip((N, H, W), values))
    try:
        want = expr.subs(at)
    except ZeroDivisionError:  # sympy's Mod by 0
        want = sympy.nan
    if isinstance(decoded, Size):
        event(f"decoded to a Size, head {decoded.head}")
        assert repr(decoded) == str(decoded)
        if str(decoded) == str(expr):
            event("printed as sympy prints it")
        # as sympy again (sympy may simplify what it rebuilds: n + Max(n + w, w + 1) is 2*n + w)
        for again in (decoded.to_sympy(), parse_dim_expr(str(decoded))):
            assert again == expr or not want.is_finite or again.subs(at) == want, (again, expr)
        assert {s.name for s in decoded.free_symbols} <= {s.name for s in expr.free_symbols}
        light = {Size.symbol(s.name, {"integer": True, "positive": True}): v for s, v in at.items()}
    else:
        event("decoded to an int")
        assert decoded == expr and type(decoded) is int
        light = {}
    # the executor's evaluation of either form, exact (sympy: a rational, or zoo where it divides by 0)
    for form, bound in ((decoded, light), (expr, at)):
        fn = sizes.size_function(form, {s: i for i, s in enumerate(bound)})
        assert fn is not None
        try:
            got = fn(list(bound.values()))
        except ZeroDivisionError:
            event("divides by zero at these sizes")
            assert not want.is_finite
            continue
        assert want.is_finite and got == want, (form, at, got, want)


def test_sizes_hash_and_compare_by_structure():
    seq = Size.symbol("seq", {"integer": True, "positive": True})
    assert seq == Size.symbol("seq", {"positive": True, "integer": True}) and seq.is_Symbol and seq.name == "seq"
    assert seq != Size.symbol("seq", {"integer": True})  # as sympy: other assumptions, another symbol
    assert {Size("Add", (1, seq)): 1}[Size("Add", (1, seq))] == 1
    assert Size.rational(4, 2) == 2 and str(Size.rational(2, 4)) == "1/2"
    assert sizes.is_symbol(seq) and sizes.is_symbol(N) and not sizes.is_symbol(3) and not sizes.is_symbol(N + 1)
    assert sizes.evaluate(Size("floor", (Size("Mul", (Size.rational(1, 2), seq)),)), {seq: 7}) == 3
    assert sizes.evaluate(sympy.floor(N / 2), {N: 7}) == 3
    expr = Size("floor", (Size("Add", (1, seq)),))
    assert copy.deepcopy(expr) == expr and pickle.loads(pickle.dumps(expr)) == expr
    assert pickle.loads(pickle.dumps(expr)).free_symbols == {seq}
