"""Reads the printed form (see `ir.printer`) back into a Graph.

`parse_graph(print_graph(g), resources(g))` rebuilds `g`: printing the result gives the
same text. Errors are `IRError` with the line and column."""

from __future__ import annotations

import json
import math
import re
from collections import ChainMap
from typing import Any

import numpy as np

from ..errors import IRError
from .dtypes import DType
from .graph import Graph, Node, Value
from .types import OptionalType, SequenceType, TensorType, Type, parse_dim

_BARE = re.compile(r"[A-Za-z0-9_.]+")
_NUMBER = re.compile(r"-?(?:inf|nan|\d+(?:\.\d*)?(?:[eE][-+]?\d+)?|\.\d+(?:[eE][-+]?\d+)?)")


def parse_graph(text: str, resources: dict[str, np.ndarray] | None = None) -> Graph:
    parser = _Parser(text, resources or {})
    graph = parser.graph(ChainMap())
    parser.skip()
    if parser.pos != len(text):
        parser.fail("unexpected text after the graph")
    return graph


class _Parser:
    def __init__(self, text: str, resources: dict[str, np.ndarray]):
        self.text = text
        self.pos = 0
        self.resources = resources

    # -- lexing helpers -------------------------------------------------------------
    def fail(self, message: str):
        line = self.text.count("\n", 0, self.pos) + 1
        col = self.pos - (self.text.rfind("\n", 0, self.pos) + 1) + 1
        raise IRError(f"line {line}, column {col}: {message}")

    def skip(self) -> None:
        while self.pos < len(self.text) and self.text[self.pos] in " \t\r\n":
            self.pos += 1

    def peek(self, literal: str) -> bool:
        self.skip()
        return self.text.startswith(literal, self.pos)

    def accept(self, literal: str) -> bool:
        if self.peek(literal):
            self.pos += len(literal)
            return True
        return False

    def expect(self, literal: str) -> None:
        if not self.accept(literal):
            found = self.text[self.pos:self.pos + 12].split("\n")[0]
            self.fail(f"expected {literal!r}, found {found!r}")

    def name(self) -> str:
        self.skip()
        if self.peek('"'):
            return self.json()
        m = _BARE.match(self.text, self.pos)
        if not m:
            self.fail("expected a name")
        self.pos = m.end()
        return m.group()

    def json(self) -> Any:
        self.skip()
        try:
            value, end = json.JSONDecoder().raw_decode(self.text, self.pos)
        except json.JSONDecodeError as e:
            self.fail(f"bad literal: {e.msg}")
        self.pos = end
        return value

    def until(self, closing: str) -> str:
        """Raw text up to the matching `closing` bracket (consumed)."""
        depth, start = 0, self.pos
        opening = {"]": "[", ">": "<"}[closing]
        while self.pos < len(self.text):
            ch = self.text[self.pos]
            if ch == opening:
                depth += 1
            elif ch == closing:
                if depth == 0:
                    self.pos += 1
                    return self.text[start:self.pos - 1]
                depth -= 1
            self.pos += 1
        self.fail(f"missing {closing!r}")

    # -- types ----------------------------------------------------------------------
    def type(self) -> Type | None:
        self.skip()
        if self.accept("?"):
            return None
        for prefix, cls in (("seq<", SequenceType), ("opt<", OptionalType)):
            if self.accept(prefix):
                elem = self.type()
                self.expect(">")
                return cls(elem)
        m = re.compile(r"[a-z0-9]+").match(self.text, self.pos)
        if not m:
            self.fail("expected a type")
        self.pos = m.end()
        try:
            dtype = DType.from_short(m.group())
        except ValueError as e:
            self.fail(str(e))
        self.expect("[")
        body = self.until("]").strip()
        if body == "*":
            return TensorType(dtype, None)
        dims = [parse_dim(d, printed=True) for d in _split_top(body)] if body else []
        return TensorType(dtype, tuple(dims))

    # -- values ---------------------------------------------------------------------
    def tensor(self) -> np.ndarray:
        self.expect("tensor<")
        t = self.type()
        self.expect(">")
        if not isinstance(t, TensorType) or t.shape is None:
            self.fail("a tensor needs a static shape")
        if self.accept("resource<"):
            key = self.until(">")
            if key not in self.resources:
                self.fail(f"resource {key!r} was not supplied")
            return self.resources[key]
        self.expect("[")
        items = []
        while not self.accept("]"):
            items.append(self.scalar(t.dtype))
            self.accept(",")
        if t.dtype is DType.string:
            data = np.array(items, dtype=object)
        else:
            data = np.array(items, dtype=np.float64 if t.dtype.is_float else None)
            data = data.astype(t.dtype.numpy) if data.size else np.zeros(0, t.dtype.numpy)
        return data.reshape(t.shape)

    def scalar(self, dtype: DType) -> Any:
        if dtype is DType.string:
            return self.json()
        if self.accept("true"):
            return True
        if self.accept("false"):
            return False
        return self.number()

    def number(self) -> int | float:
        self.skip()
        m = _NUMBER.match(self.text, self.pos)
        if not m:
            self.fail("expected a number")
        self.pos = m.end()
        s = m.group()
        if re.fullmatch(r"-?\d+", s):
            return int(s)
        return float(s) if "nan" not in s else math.nan

    def attr(self, scope: ChainMap) -> Any:
        self.skip()
        if self.peek("graph "):
            return self.graph(scope)
        if self.peek("tensor<"):
            return self.tensor()
        if self.accept("type<"):
            t = self.type()
            self.expect(">")
            return t
        if self.accept("none"):
            return None
        if self.accept("["):
            items = []
            while not self.accept("]"):
                items.append(self.attr(scope))
                self.accept(",")
            return items
        if self.peek('"'):
            return self.json()
        return self.number()

    def ref(self, scope: ChainMap) -> Value | None:
        if self.accept("_"):
            return None
        self.expect("%")
        name = self.name()
        if name not in scope:
            self.fail(f"value %{name} is not defined")
        return scope[name]

    # -- structure ------------------------------------------------------------------
    def graph(self, outer: ChainMap) -> Graph:
        self.expect("graph")
        graph = Graph(self.name())
        scope = outer.new_child()
        self.expect("(")
        while not self.accept(")"):
            self.expect("%")
            name = self.name()
            self.expect(":")
            value = Value(name, self.type())
            graph.inputs.append(value)
            scope[name] = value
            self.accept(",")
        if self.accept("opsets"):
            graph.opsets = {str(k): int(v) for k, v in self.json().items()}
        self.expect("{")
        while True:
            if self.accept("const"):
                self.expect("%")
                name = self.name()
                self.expect("=")
                scope[name] = graph.add_constant(name, self.tensor())
            elif self.accept("return"):
                graph.outputs = [self.ref(scope)]
                while self.accept(","):
                    graph.outputs.append(self.ref(scope))
                self.expect("}")
                return graph
            else:
                graph.nodes.append(self.node(scope))

    def node(self, scope: ChainMap) -> Node:
        outputs = []
        while True:
            self.expect("%")
            name = self.name()
            self.expect(":")
            outputs.append(Value(name, self.type()))
            if not self.accept(","):
                break
        self.expect("=")
        op = self.name()
        self.expect("(")
        inputs = []
        while not self.accept(")"):
            inputs.append(self.ref(scope))
            self.accept(",")
        attrs = {}
        if self.accept("{"):
            while not self.accept("}"):
                key = self.name()
                self.expect("=")
                attrs[key] = self.attr(scope)
                self.accept(",")
        self.expect("@")
        node = Node(op, inputs, outputs, attrs, self.name())
        for v in outputs:
            scope[v.name] = v
        return node


def _split_top(body: str) -> list[str]:
    parts, depth, start = [], 0, 0
    for i, ch in enumerate(body):
        if ch in "([":
            depth += 1
        elif ch in ")]":
            depth -= 1
        elif ch == "," and depth == 0:
            parts.append(body[start:i])
            start = i + 1
    parts.append(body[start:])
    return parts
