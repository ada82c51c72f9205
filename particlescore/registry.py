"""The one table of TOML names: problems, score estimators, physics terms and integrators.

Each component registers itself at the bottom of its own module with one line::

    registry.register("estimator", "kde", KDE)

Its options are the keyword arguments of its constructor: :func:`register` turns the
constructor's signature (names, type annotations, defaults) into a frozen, keyword-only
dataclass, ``registry.resolve("estimator", "kde").options``, so every default lives once, in the
constructor, and every constructor argument is a TOML key (``[estimator] bandwidth = 0.3``) and
a command-line override (``--set estimator.bandwidth=0.3``). Arguments the run supplies
(a network, the problem's exact solution, the run's seed) are listed in ``exclude`` and passed
by a ``build(factory, options, problem=..., seed=...)`` function. This module imports no
component: the components import it.
"""
from __future__ import annotations

import dataclasses
import inspect
import typing
from dataclasses import dataclass
from typing import Callable

__all__ = ["KINDS", "Entry", "register", "unregister", "resolve", "names", "entries", "create", "options_class"]

KINDS = ("problem", "estimator", "physics", "integrator")

_TABLE: dict[str, dict[str, "Entry"]] = {kind: {} for kind in KINDS}


@dataclass(frozen=True)
class Entry:
    """A registered component: ``factory(**options)`` builds it, unless ``build`` is given."""

    kind: str
    name: str
    factory: Callable
    options: type                  # frozen keyword-only dataclass of the TOML keys
    build: Callable | None = None  # build(factory, options: dict, *, problem, seed) -> component

    def create(self, options, *, problem=None, seed: int = 0):
        """The component for ``options`` (an :attr:`options` instance or a dict of its fields)."""
        values = options if isinstance(options, dict) else {f.name: getattr(options, f.name)
                                                            for f in dataclasses.fields(options)}
        if self.build is None:
            return self.factory(**values)
        return self.build(self.factory, values, problem=problem, seed=seed)


def options_class(factory: Callable, class_name: str, *, exclude=(), include=None) -> type:
    """A frozen keyword-only dataclass with the parameters of ``factory`` (a class: its
    ``__init__``) as fields: same names, annotated types, defaults (no default = required).

    ``include`` keeps only those names; ``exclude`` drops names the run supplies. A parameter
    without annotation takes the type of its default. ``*args``/``**kwargs`` are refused: they
    would hide the options (and swallow typos).
    """
    target = factory.__init__ if inspect.isclass(factory) else factory
    params = () if target is object.__init__ else inspect.signature(target).parameters.values()
    hints = {} if target is object.__init__ else typing.get_type_hints(target)
    fields = []
    for param in params:
        if param.name == "self" or param.name in exclude or (include is not None and param.name not in include):
            continue
        if param.kind in (param.VAR_POSITIONAL, param.VAR_KEYWORD):
            raise ValueError(f"{factory.__qualname__} takes *{param.name}: its options cannot be listed")
        has_default = param.default is not param.empty
        kind = hints.get(param.name, type(param.default) if has_default and param.default is not None else None)
        if kind is None:
            raise ValueError(f"{factory.__qualname__}: parameter {param.name!r} needs a type annotation")
        fields.append((param.name, kind, dataclasses.field(default=param.default) if has_default
                       else dataclasses.field()))
    cls = dataclasses.make_dataclass(class_name, fields, frozen=True, kw_only=True)
    cls.__doc__ = f"Options of {factory.__qualname__} (its keyword arguments and defaults)."
    return cls


def register(kind: str, name: str, factory: Callable, *, exclude=(), build: Callable | None = None) -> Entry:
    """Make ``factory`` available as ``[kind] name = "<name>"``; returns the :class:`Entry`.

    Registering a name again with a different factory is an error (:func:`unregister` first).
    """
    if kind not in KINDS:
        raise ValueError(f"unknown component kind {kind!r}; one of: {', '.join(KINDS)}")
    if not isinstance(name, str) or not name.isidentifier():
        raise ValueError(f"a {kind} name must be an identifier (TOML-friendly), got {name!r}")
    old = _TABLE[kind].get(name)
    if old is not None and old.factory is not factory:
        raise ValueError(f"{kind} {name!r} is already registered for {old.factory.__qualname__}")
    class_name = "".join(part.title() for part in name.split("_")) + "Options"
    entry = Entry(kind, name, factory, options_class(factory, class_name, exclude=exclude), build)
    _TABLE[kind][name] = entry
    return entry


def unregister(kind: str, name: str) -> None:
    """Remove a registered name (tests and plug-ins that replace a component)."""
    resolve(kind, name)
    del _TABLE[kind][name]


def resolve(kind: str, name: str) -> Entry:
    """The entry registered as ``name`` (ValueError listing the known names)."""
    if kind not in KINDS:
        raise ValueError(f"unknown component kind {kind!r}; one of: {', '.join(KINDS)}")
    entry = _TABLE[kind].get(name) if isinstance(name, str) else None
    if entry is None:
        raise ValueError(f"unknown {kind}.name {name!r}; allowed: {', '.join(names(kind))}")
    return entry


def names(kind: str) -> tuple[str, ...]:
    """Registered names of one kind, in registration order."""
    return tuple(_TABLE[kind])


def entries(kind: str) -> tuple[Entry, ...]:
    return tuple(_TABLE[kind].values())


def create(kind: str, name: str, options=None, *, problem=None, seed: int = 0):
    """Build the component ``name`` with ``options`` (dict or options instance; None = defaults)."""
    entry = resolve(kind, name)
    return entry.create(entry.options() if options is None else options, problem=problem, seed=seed)
