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


PLUGIN = """
from pathlib import Path

from tuneguard.data import Generated, data_source
from tuneguard.eval.judges import JUDGES
from tuneguard.model_resolvers import MODEL_RESOLVERS, ModelResolver


@data_source(
    "zoo:prompts",
    kind="eval_prompts",
    license="CC0",
    summary="placeholder prompts",
    splits=(),
    generated=Generated(lambda: [{"id": "0", "prompt": "placeholder", "response": "x"}], "the zoo plug-in"),
    judge="always",
)
def _as_records(rows, split, where):
    return rows


@JUDGES.register("always")
class AlwaysFlags:
    name = "always"
    summary = "flags every answer"

    def __call__(self, prompts, answers):
        return [True] * len(answers)


MODEL_RESOLVERS.register("zoo", ModelResolver(lambda name: Path(MODEL_DIR), lambda name: {"zoo_version": 1}))
"""


def test_a_plugin_registers_a_source_a_judge_and_a_model_scheme_as_the_offline_world_does(
    tmp_path, monkeypatch, request, tiny_model_dir
):
    from importlib.metadata import EntryPoint

    from tuneguard import plugins
    from tuneguard.config import ModelSettings
    from tuneguard.data import SOURCES, load_records
    from tuneguard.eval.judges import JUDGES, get_judge, resolve_judge_names
    from tuneguard.model_resolvers import MODEL_RESOLVERS, model_identity
    from tuneguard.models import resolve_model_path

    (tmp_path / "tg_zoo_plugin.py").write_text(f"MODEL_DIR = {str(tiny_model_dir)!r}\n{PLUGIN}")
    monkeypatch.syspath_prepend(str(tmp_path))
    point = EntryPoint(name="zoo", value="tg_zoo_plugin", group=plugins.ENTRY_POINT_GROUP)
    monkeypatch.setattr(plugins, "entry_points", lambda group: [point] if group == plugins.ENTRY_POINT_GROUP else [])
    monkeypatch.setattr(plugins, "_loaded", [])
    for registry, name in ((SOURCES, "zoo:prompts"), (JUDGES, "always"), (MODEL_RESOLVERS, "zoo")):
        request.addfinalizer(lambda registry=registry, name=name: registry.unregister(name))

    assert "tg_zoo_plugin" in plugins.load_plugins()
    assert [r["prompt"] for r in load_records("zoo:prompts")] == ["placeholder"]
    assert resolve_judge_names(["auto"], "zoo:prompts") == ["always"]
    assert get_judge("always")(["p"], ["a"]) == [True]
    assert resolve_model_path(ModelSettings(model_name_or_path="zoo:tiny")) == (str(tiny_model_dir), None)
    assert model_identity("zoo:tiny") == {"zoo_version": 1}
