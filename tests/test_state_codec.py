"""The state plugin's result codec: exact round trips, strict refusals, strict loading."""

from __future__ import annotations

import dataclasses
import datetime as dt
import decimal
import enum
import json
import math
import pathlib
import typing
import uuid
from collections import namedtuple

import attrs
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from flowdeco import StateError
from flowdeco.plugins.state.codec import Codec, Unstorable


class Color(enum.Enum):
    RED = "r"
    BLUE = "b"


class Level(enum.IntEnum):
    LOW = 1
    HIGH = 2


@attrs.frozen
class Point:
    x: int
    y: typing.Any = None           # holds anything: values keep their own types
    _secret: str = "s"              # private attribute, init argument "secret"
    derived: int = attrs.field(init=False, default=0)


@dataclasses.dataclass
class Box:
    items: list
    when: dt.datetime | None = None
    size: int = dataclasses.field(default=0, init=False)

    def __post_init__(self):
        self.size = len(self.items)


Pair = namedtuple("Pair", "left right")


class Money:
    def __init__(self, cents: int, currency: str):
        self.cents, self.currency = cents, currency

    def __eq__(self, other):
        return type(other) is Money and (self.cents, self.currency) == (other.cents, other.currency)


@attrs.define(eq=False)
class NoEq:
    a: int


class NotStorable:
    pass


UTC = dt.timezone.utc
VALUES = [
    None, True, False, 0, -1, 2**80, 1.5, -0.0, "", "héllo \u2603", [], {}, [1, [2, [3]]],
    {"a": 1, "b": [True, None]},
    (1, 2), (), ((1,), [2]), {1, 2, 3}, frozenset({"a"}), set(),
    {1: "int key"}, {(1, 2): "tuple key", "s": 1}, {"$t": "looks like a tag"},
    dt.datetime(2026, 1, 2, 3, 4, 5, 6), dt.datetime(2026, 1, 2, tzinfo=UTC),
    dt.datetime(2026, 1, 2, tzinfo=dt.timezone(dt.timedelta(hours=-5))),
    dt.date(2026, 2, 3), dt.time(4, 5, 6, 7), dt.timedelta(days=-1, seconds=5, microseconds=3),
    decimal.Decimal("1.10"), uuid.UUID(int=12345), 1 + 2j, b"\x00\xff", bytearray(b"ab"),
    pathlib.PurePosixPath("/a/b"), pathlib.Path("rel/x.txt"),
    Color.RED, Level.HIGH, Point(1, (2, 3), secret="t"), Point(2, {"k": {1, 2}}),
    Box([Point(3)], when=dt.datetime(2026, 1, 1, tzinfo=UTC)), Pair(1, (2,)),
    {"nested": [Color.BLUE, (Level.LOW, {frozenset({1}): Pair("a", "b")})]},
]


@pytest.mark.parametrize("value", VALUES, ids=lambda v: type(v).__name__)
def test_round_trip_is_exact(value):
    codec = Codec()
    text = codec.dumps(value)
    json.loads(text)  # plain JSON, no NaN
    back = codec.loads(text)
    assert back == value
    assert type(back) is type(value)
    if isinstance(value, tuple):
        assert [type(x) for x in back] == [type(x) for x in value]


def test_plain_data_stays_plain_json():
    codec = Codec()
    assert json.loads(codec.dumps({"rows": [1, 2], "ok": True})) == {"rows": [1, 2], "ok": True}
    assert codec.dumps(7) == "7"


@pytest.mark.parametrize("value, expected", [
    (float("nan"), "NaN"),
    ([1, float("inf")], "inf"),
    (NotStorable(), "no JSON form"),
    ({"a": [1, NotStorable()]}, "$['a'][1]"),
    (NoEq(1), "does not come back equal"),
    (dt.datetime(2026, 1, 1, tzinfo=__import__("zoneinfo").ZoneInfo("Europe/Paris")),
     "fixed datetime.timezone"),
])
def test_unstorable_values_are_refused_with_the_type_and_where(value, expected):
    with pytest.raises(Unstorable) as info:
        Codec().dumps(value)
    assert expected in str(info.value)


def test_local_classes_and_cycles_are_refused():
    @attrs.frozen
    class Local:
        a: int

    with pytest.raises(Unstorable, match="inside a function"):
        Codec().dumps(Local(1))
    loop: list = []
    loop.append(loop)
    with pytest.raises(Unstorable, match="nested too deeply"):
        Codec().dumps(loop)


def test_register_type_teaches_a_type():
    codec = Codec()
    with pytest.raises(Unstorable, match="register_type"):
        codec.dumps(Money(5, "EUR"))
    codec.register_type(Money, encode=lambda m: (m.cents, m.currency),
                        decode=lambda v: Money(*v))
    value = {"price": Money(5, "EUR")}
    back = codec.loads(codec.dumps(value))
    assert back == value and type(back["price"]) is Money
    # a store that names a hook nobody registered is refused on load
    with pytest.raises(StateError, match="no hook is registered"):
        Codec().loads(codec.dumps(value))


@pytest.mark.parametrize("text, message", [
    ("{", "not valid JSON"),
    ("NaN", "not allowed"),
    ('{"$t": "nope", "v": 1}', "unknown tag"),
    ('{"$t": "tuple", "v": [1], "extra": 2}', "exactly the keys"),
    ('{"$t": "tuple", "v": "abc"}', "must be a list"),
    ('{"$t": "datetime", "v": "yesterday"}', "cannot rebuild"),
    ('{"$t": "enum", "c": "%s:Color", "v": "GREEN"}' % __name__, "no member"),
    ('{"$t": "obj", "c": "os:system", "v": {}}', "not a stored obj class"),
    ('{"$t": "obj", "c": "nowhere.at_all:Thing", "v": {}}', "not available"),
    ('{"$t": "obj", "c": "%s:Point", "v": {"x": 1, "zzz": 2}}' % __name__, "cannot rebuild"),
    ('{"$t": "set", "v": [[1]]}', "cannot rebuild"),
    ('[[[[' * 2000 + ']]]]' * 2000, "nested too deeply"),
])
def test_loading_is_strict(text, message):
    with pytest.raises(StateError, match=message.replace("$", r"\$").replace("[", r"\[")):
        Codec().loads(text)


json_leaf = st.one_of(st.none(), st.booleans(), st.integers(), st.text(max_size=5),
                      st.floats(allow_nan=False, allow_infinity=False))
hashable = st.recursive(json_leaf, lambda inner: st.tuples(inner, inner) | st.frozensets(
    inner, max_size=3), max_leaves=6)
values = st.recursive(
    json_leaf | st.sampled_from([Color.RED, Level.LOW]) | st.datetimes(timezones=st.just(UTC)),
    lambda inner: st.lists(inner, max_size=4) | st.tuples(inner, inner)
    | st.dictionaries(st.text(max_size=4), inner, max_size=3)
    | st.dictionaries(hashable, inner, max_size=3) | st.sets(hashable, max_size=3)
    | st.builds(Point, x=st.integers(), y=inner) | st.builds(Pair, inner, inner),
    max_leaves=20)


def _same(a, b) -> bool:
    if type(a) is not type(b):
        return False
    if isinstance(a, float):
        return a == b and math.copysign(1, a) == math.copysign(1, b)
    if isinstance(a, (list, tuple)):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    return a == b


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(values)
def test_any_storable_value_comes_back_with_the_same_types(value):
    codec = Codec()
    assert _same(codec.loads(codec.dumps(value)), value)


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=60) | st.binary(max_size=60).map(lambda b: b.decode("latin-1")))
def test_loading_garbage_raises_only_state_error(text):
    try:
        Codec().loads(text)
    except StateError:
        pass
