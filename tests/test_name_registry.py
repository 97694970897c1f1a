"""The generic registry (tuneguard.registry): one registration style, did-you-mean, lazy built-ins."""

import sys

import pytest

from tuneguard.registry import Registry, UnknownNameError


def test_unknown_name_error_suggests_the_closest_registered_name():
    reg: Registry[int] = Registry("widget")
    reg.register("lisa", 1)
    reg.register("booster", 2)
    with pytest.raises(
        UnknownNameError, match=r"unknown widget 'lsia' \(did you mean 'lisa'\?\); known: booster, lisa"
    ):
        reg.get("lsia")


def test_register_works_as_call_and_as_decorator_and_refuses_a_second_owner():
    reg: Registry = Registry("widget")

    @reg.register("f")
    def f() -> int:
        return 1

    assert reg.get("f") is f and reg.register("g", 3) == 3
    assert reg.names() == ["f", "g"] and "f" in reg and len(reg) == 2
    reg.register("f", f)  # the same entry again (a module imported twice) is fine
    with pytest.raises(ValueError, match="already registered"):
        reg.register("f", lambda: 2)


def test_builtin_modules_are_imported_on_first_lookup_only(tmp_path, monkeypatch):
    module = tmp_path / "tg_lazy_widgets.py"
    module.write_text("from tests_registry_target import REG\nREG.register('late', 42)\n")
    (tmp_path / "tests_registry_target.py").write_text(
        "from tuneguard.registry import Registry\nREG = Registry('widget', builtins=('tg_lazy_widgets',))\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    import tests_registry_target

    assert "tg_lazy_widgets" not in sys.modules
    assert tests_registry_target.REG.get("late") == 42
    assert "tg_lazy_widgets" in sys.modules
