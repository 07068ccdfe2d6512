"""``-k EXPR``: pytest-style selection by name.

Grammar (pytest's)::

    expr := and_expr ("or" and_expr)*
    and_expr := not_expr ("and" not_expr)*
    not_expr := "not" not_expr | "(" expr ")" | ident

An identifier matches a task whose qualified name contains it,
case-insensitively.  Identifiers may contain letters, digits, ``_ . - [ ]``.
"""

from __future__ import annotations

import re
from typing import Callable

from .errors import UsageError, shorten

_TOKEN = re.compile(r"\s*(\(|\)|[\w.\-\[\]:]+)")

Matcher = Callable[[str], bool]


def compile_expression(expr: str) -> Matcher:
    """Compile ``expr`` into a predicate on task names; :class:`UsageError` if malformed."""
    if not isinstance(expr, str):
        raise UsageError(f"-k / select must be an expression string, got {expr!r}")
    tokens = _tokenize(expr)
    if not tokens:
        raise UsageError("-k: empty expression")
    pos = 0

    def peek() -> str | None:
        return tokens[pos] if pos < len(tokens) else None

    def take() -> str:
        nonlocal pos
        tok = peek()
        if tok is None:
            raise UsageError(f"-k {shorten(expr)}: unexpected end of expression")
        pos += 1
        return tok

    def parse_or() -> Matcher:
        left = parse_and()
        while peek() == "or":
            take()
            right = parse_and()
            left = (lambda a, b: lambda n: a(n) or b(n))(left, right)
        return left

    def parse_and() -> Matcher:
        left = parse_not()
        while peek() == "and":
            take()
            right = parse_not()
            left = (lambda a, b: lambda n: a(n) and b(n))(left, right)
        return left

    def parse_not() -> Matcher:
        tok = take()
        if tok == "not":
            inner = parse_not()
            return lambda n: not inner(n)
        if tok == "(":
            inner = parse_or()
            if take() != ")":
                raise UsageError(f"-k {shorten(expr)}: expected ')'")
            return inner
        if tok in (")", "and", "or"):
            raise UsageError(f"-k {shorten(expr)}: unexpected {tok!r}")
        needle = tok.lower()
        return lambda n: needle in n.lower()

    matcher = parse_or()
    if pos != len(tokens):
        raise UsageError(f"-k {shorten(expr)}: unexpected {tokens[pos]!r}")
    return matcher


def _tokenize(expr: str) -> list[str]:
    tokens: list[str] = []
    pos = 0
    text = expr.rstrip()
    while pos < len(text):
        m = _TOKEN.match(text, pos)
        if not m or m.end() == pos:
            raise UsageError(f"-k {shorten(expr)}: unexpected character {text[pos:].strip()[:1]!r}")
        tokens.append(m.group(1))
        pos = m.end()
    return tokens
