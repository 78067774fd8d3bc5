"""The public API surface: every public name is exported, every export exists.

A class or function added to a module but forgotten in ``__all__`` is invisible to
``from eventbus import *``, to the docs and to type checkers' re-export rules; this
guard (in the style of httpx's) catches it.
"""

import builtins
import inspect
import re
import types

import pytest

import eventbus
import eventbus.errors
import eventbus.hooks
import eventbus.testing
from eventbus import errors
from eventbus.errors import EventBusError, HandlerDirective

MODULES = [eventbus, eventbus.errors, eventbus.hooks, eventbus.testing]


def _defined_in_eventbus(value: object) -> bool:
    module = getattr(value, "__module__", None) or ""
    return module == "eventbus" or module.startswith("eventbus.")


@pytest.mark.parametrize("module", MODULES, ids=lambda m: m.__name__)
def test_all_is_sorted_and_has_no_duplicates(module: types.ModuleType):
    exported = module.__all__
    assert exported == sorted(exported)
    assert len(exported) == len(set(exported))
    assert all(isinstance(name, str) for name in exported)


@pytest.mark.parametrize("module", MODULES, ids=lambda m: m.__name__)
def test_every_exported_name_exists(module: types.ModuleType):
    missing = [name for name in module.__all__ if not hasattr(module, name)]
    assert missing == []


@pytest.mark.parametrize("module", MODULES, ids=lambda m: m.__name__)
def test_every_public_class_and_function_is_exported(module: types.ModuleType):
    public = {
        name
        for name, value in vars(module).items()
        if not name.startswith("_")
        and (inspect.isclass(value) or inspect.isfunction(value))
        and _defined_in_eventbus(value)
    }
    assert public - set(module.__all__) == set()


def test_every_signal_in_hooks_is_exported():
    from blinker import Signal

    signals = {
        name
        for name, value in vars(eventbus.hooks).items()
        if not name.startswith("_") and isinstance(value, Signal)
    }
    assert signals == set(eventbus.hooks.__all__)


def test_star_import_gives_exactly_all():
    namespace: dict = {}
    exec("from eventbus import *", namespace)
    namespace.pop("__builtins__")
    assert set(namespace) == set(eventbus.__all__)


def test_top_level_exports_are_the_same_objects_as_in_their_modules():
    for name in errors.__all__:
        if hasattr(eventbus, name):
            assert getattr(eventbus, name) is getattr(errors, name)
    assert eventbus.default_registry is eventbus.event.__globals__["default_registry"]


def test_version_is_a_string():
    assert isinstance(eventbus.__version__, str)
    assert re.fullmatch(r"\d+\.\d+\.\d+\S*", eventbus.__version__)


# -- the errors module ------------------------------------------------------------------


def _exception_classes() -> dict[str, type[BaseException]]:
    return {
        name: value
        for name, value in vars(errors).items()
        if inspect.isclass(value)
        and issubclass(value, BaseException)
        and value.__module__ == errors.__name__
    }


def test_every_exception_class_in_errors_is_exported():
    assert set(_exception_classes()) == set(errors.__all__)


def test_every_error_subclasses_event_bus_error_except_directives_and_warnings():
    for name in errors.__all__:
        cls = getattr(errors, name)
        assert inspect.isclass(cls)
        assert issubclass(cls, Exception), name
        if issubclass(cls, HandlerDirective | Warning):
            assert not issubclass(cls, EventBusError), name
        else:
            assert issubclass(cls, EventBusError), name


def test_directives_are_their_own_branch():
    directives = {
        name for name in errors.__all__ if issubclass(getattr(errors, name), HandlerDirective)
    }
    assert directives == {"HandlerDirective", "RetryLater", "RejectEvent", "SkipEvent"}


def test_except_event_bus_error_does_not_swallow_a_directive():
    def handler() -> str:
        try:
            raise errors.RetryLater(1.0, "busy")
        except EventBusError:  # pragma: no cover - the point is that this does not match
            return "swallowed"

    with pytest.raises(errors.RetryLater, match=r"retry later, in 1s: busy"):
        handler()


def test_the_docstring_tree_mentions_every_class():
    doc = errors.__doc__ or ""
    mentioned = set(re.findall(r"\b([A-Z][A-Za-z]+)\b", doc))
    assert set(errors.__all__) - mentioned == set()


_TREE_LINE = re.compile(r"^(?P<indent>[ │├└─]*)(?P<name>[A-Z][A-Za-z]+)(?:\((?P<base>[^)]*)\))?")


def _docstring_trees() -> list[tuple[int, str, str | None]]:
    """(depth, class name, parenthesised text) for every line of the docstring's trees."""
    rows = []
    for line in (errors.__doc__ or "").splitlines():
        if not line.startswith("    ") or not line.strip():
            continue
        match = _TREE_LINE.match(line[4:])
        if match is None:
            continue
        name = match["name"]
        if not hasattr(errors, name):
            continue
        rows.append((len(match["indent"]) // 4, name, match["base"]))
    return rows


def test_the_docstring_tree_matches_the_real_hierarchy():
    rows = _docstring_trees()
    assert {name for _, name, _ in rows} == set(errors.__all__) | {"EventBusError"}

    parents: dict[int, str] = {}
    checked = 0
    for depth, name, base in rows:
        cls = getattr(errors, name)
        parents[depth] = name
        if depth > 0:
            parent = getattr(errors, parents[depth - 1])
            assert issubclass(cls, parent), f"{name} is drawn under {parent.__name__}"
            checked += 1
        if base and hasattr(builtins, base):
            assert issubclass(cls, getattr(builtins, base)), f"{name} should subclass {base}"
    assert checked >= len(errors.__all__) - 3  # every class but the three roots
