"""Frozen value classes for the connection path, without importing dataclasses.

Every connection is a fresh interpreter, so every import is paid per connection: dataclasses
brings inspect, ast, dis and tokenize along (about 8 ms of a 9 ms interpreter start, python
-X importtime, bench/overhead) and each decorated class costs a compile on top. ``@frozen`` does
the little the gate's values need, frozen fields with defaults, equality, hash, repr, at
class creation in plain Python. mypy reads it as ``@dataclass(frozen=True)``
(dataclass_transform), so the types are checked exactly as before.

The connection path also imports nothing from ``typing`` at run time (10 ms with its own
imports): with ``from __future__ import annotations`` annotations are never evaluated, and a
module sets ``TYPE_CHECKING = False`` and imports its typing names under ``if TYPE_CHECKING:``,
a name mypy takes as always true. Admin commands (check, status, metrics, repos) are free to
use dataclasses and typing as usual.
"""

from __future__ import annotations

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable
    from typing import Any, TypeVar, dataclass_transform

    T = TypeVar("T")
    V = TypeVar("V")
else:

    def dataclass_transform(**_: object) -> Callable[[T], T]:
        return lambda f: f  # only mypy reads what it says


class FrozenError(AttributeError):
    """Assigning to a field of a value (dataclasses.FrozenInstanceError's counterpart)."""


class _Factory:
    __slots__ = ("make",)

    def __init__(self, make: Callable[[], object]) -> None:
        self.make = make


_MISSING = object()


def field(*, default_factory: Callable[[], T]) -> T:
    """A field whose default is made afresh for each value (a mutable default must not be shared)."""
    return _Factory(default_factory)  # type: ignore[return-value]  # replaced by a made value in __init__


def _frozen(self: object, name: str, _value: object = None) -> None:
    raise FrozenError(f"cannot assign to field {name!r} of a frozen {type(self).__name__}")


def _build(cls: type[V], *, order: bool) -> type[V]:
    # Under `from __future__ import annotations` every annotation is a string, in class order.
    annotations = cls.__dict__.get("__annotations__", {})  # noqa: RUF063  # inspect is what this module avoids
    names = tuple(n for n, t in annotations.items() if not str(t).startswith("ClassVar"))
    defaults = {n: cls.__dict__[n] for n in names if n in cls.__dict__}
    for n, d in defaults.items():
        if isinstance(d, _Factory):
            delattr(cls, n)  # a factory is not a class-level default; every value gets its own
    fieldset = frozenset(names)
    qualname = cls.__qualname__
    store = object.__setattr__

    def __init__(self: Any, *args: object, **kwargs: object) -> None:
        if len(args) > len(names):
            raise TypeError(f"{qualname}() takes {len(names)} positional arguments but {len(args)} were given")
        given = dict(zip(names, args, strict=False))
        for k, v in kwargs.items():
            if k not in fieldset:
                raise TypeError(f"{qualname}() got an unexpected keyword argument {k!r}")
            if k in given:
                raise TypeError(f"{qualname}() got multiple values for argument {k!r}")
            given[k] = v
        for n in names:
            if n in given:
                store(self, n, given[n])
                continue
            d = defaults.get(n, _MISSING)
            if d is _MISSING:
                raise TypeError(f"{qualname}() missing required argument: {n!r}")
            store(self, n, d.make() if isinstance(d, _Factory) else d)
        post = getattr(self, "__post_init__", None)
        if post is not None:
            post()

    def astuple(self: Any) -> tuple[object, ...]:
        return tuple(getattr(self, n) for n in names)

    def __eq__(self: Any, other: object) -> bool:
        if other.__class__ is not self.__class__:
            return NotImplemented
        return bool(astuple(self) == astuple(other))

    def __hash__(self: Any) -> int:
        return hash(astuple(self))

    def __repr__(self: Any) -> str:
        return f"{qualname}(" + ", ".join(f"{n}={getattr(self, n)!r}" for n in names) + ")"

    methods: dict[str, object] = {
        "__init__": __init__,
        "__eq__": __eq__,
        "__hash__": __hash__,
        "__repr__": __repr__,
        "__setattr__": _frozen,
        "__delattr__": _frozen,
        "__value_fields__": names,
    }
    if order:

        def __lt__(self: Any, other: object) -> bool:
            if other.__class__ is not self.__class__:
                return NotImplemented
            return bool(astuple(self) < astuple(other))

        def __le__(self: Any, other: object) -> bool:
            return bool(self == other or self < other)

        def __gt__(self: Any, other: object) -> bool:
            if other.__class__ is not self.__class__:
                return NotImplemented
            return bool(astuple(other) < astuple(self))

        def __ge__(self: Any, other: object) -> bool:
            return bool(self == other or self > other)

        methods.update(__lt__=__lt__, __le__=__le__, __gt__=__gt__, __ge__=__ge__)
    for k, m in methods.items():
        setattr(cls, k, m)
    return cls


@dataclass_transform(frozen_default=True, field_specifiers=(field,))
def frozen(cls: type[V]) -> type[V]:
    """A frozen value class: ``@dataclass(frozen=True)`` for the connection path."""
    return _build(cls, order=False)


@dataclass_transform(frozen_default=True, order_default=True, field_specifiers=(field,))
def frozen_ordered(cls: type[V]) -> type[V]:
    """A frozen value class that also compares by its fields in order (``order=True``)."""
    return _build(cls, order=True)


def fields(obj: object) -> tuple[str, ...]:
    names: tuple[str, ...] = type(obj).__value_fields__  # type: ignore[attr-defined]
    return names


def asdict(obj: object) -> dict[str, Any]:
    """Field name to value, one level deep (what check and status print)."""
    return {n: getattr(obj, n) for n in fields(obj)}


def replace(obj: T, **changes: object) -> T:
    """A copy of a value with some fields changed (dataclasses.replace)."""
    return type(obj)(**{**asdict(obj), **changes})
