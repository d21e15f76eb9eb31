"""The one registry shape (``hdmap_ad.registry.Registry``) and the three seams built on it."""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from hdmap_ad.errors import InputError
from hdmap_ad.registry import Registry


@dataclass(frozen=True)
class Item:
    name: str
    value: int = 0


@pytest.fixture
def colours() -> Registry[Item]:
    return Registry("colour", [Item("red"), Item("green")])


def test_builtins_come_first_in_their_order_and_get_returns_the_item(colours):
    blue = colours.register(Item("blue"))
    assert colours.names() == ("red", "green", "blue")
    assert colours.get("blue", "paint.colour") is blue
    assert colours.entries == {"red": Item("red"), "green": Item("green"), "blue": blue}


def test_a_duplicate_or_empty_name_is_refused(colours):
    with pytest.raises(ValueError, match="^colour 'red' is registered already$"):
        colours.register(Item("red", 1))
    assert colours.get("red", "c").value == 0  # the first one stays
    with pytest.raises(ValueError, match="^a colour needs a name$"):
        colours.register(Item(""))
    with pytest.raises(ValueError, match="^a colour needs a name$"):
        colours.register(object())  # no name at all
    with pytest.raises(ValueError, match="registered already"):
        Registry("colour", [Item("red"), Item("red")])


def test_a_builtin_cannot_be_removed_and_an_absent_name_is_ignored(colours):
    with pytest.raises(ValueError, match="^'red' is a built-in colour$"):
        colours.unregister("red")
    colours.unregister("never-registered")
    assert colours.names() == ("red", "green")


def test_an_unknown_name_names_where_and_the_registered_names(colours):
    with pytest.raises(InputError,
                       match=r"^paint\.colour: 'blue' is not one of \('red', 'green'\)$"):
        colours.get("blue", "paint.colour")
    with pytest.raises(InputError, match=r"^paint\.colour: \['red'\] is not one of"):
        colours.get(["red"], "paint.colour")  # unhashable (a YAML list): still an InputError
    worded = Registry("method", [Item("a")], unknown="{where}: unknown method {name!r}; "
                                                     "registered: {names}")
    with pytest.raises(InputError, match=r"^m\.name: unknown method 'b'; registered: \('a',\)$"):
        worded.get("b", "m.name")


def test_unregister_then_register_again_works(colours):
    before = Registry.changes
    first = colours.register(Item("blue", 1))
    colours.unregister("blue")
    colours.unregister("blue")  # absent: no change
    # every run-time change counts, so what is cached per registry state (the params
    # validator) is rebuilt after an unregister + register of the same name
    assert Registry.changes == before + 2
    assert "blue" not in colours.entries
    with pytest.raises(InputError, match="'blue' is not one of"):
        colours.get("blue", "c")
    second = colours.register(Item("blue", 2))
    assert colours.get("blue", "c") is second and second is not first
    assert colours.names()[-1] == "blue"


def test_the_module_dicts_are_the_registries_live_entries():
    """METHODS, GATES and KINDS stay the very dicts the registries hold, so code reading
    them sees a run-time registration; and the three seams refuse the same things."""
    from hdmap_ad import gating, methods
    from hdmap_ad.data import kinds

    assert methods.METHODS is methods._REGISTRY.entries
    assert gating.GATES is gating._REGISTRY.entries
    assert kinds.KINDS is kinds._REGISTRY.entries
    for unregister, builtin in ((methods.unregister_method, "patchcore"),
                                (gating.unregister_gate, "p90"),
                                (kinds.unregister_kind, "hdmap")):
        with pytest.raises(ValueError, match=f"'{builtin}' is a built-in"):
            unregister(builtin)
    for register, builtin in ((methods.register_method, methods.METHODS["patchcore"]),
                              (gating.register_gate, gating.GATES["p90"]),
                              (kinds.register_kind, kinds.KINDS["hdmap"])):
        with pytest.raises(ValueError, match="registered already"):
            register(builtin)
