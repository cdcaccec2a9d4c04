"""The recipe schema as a whole: every setting is read by the code it configures, and the old flat
`reinforce` keys each name their new place."""

from __future__ import annotations

import dataclasses
import re
import typing
from pathlib import Path

import pytest

from seqrl.config import RecipeConfig, from_dict
from seqrl.errors import ConfigError
from seqrl.rl_config import MOVED, REMOVED

PACKAGE = Path(__file__).resolve().parents[1] / "seqrl"
SCHEMA_MODULES = {"config.py", "rl_config.py", "config_checks.py"}  # (checks read settings only to refuse them)


def settings(cls: type = RecipeConfig, prefix: str = "") -> list[str]:
    """Every leaf setting of the schema, dotted (`reinforce.candidates.num_samples`)."""
    out, hints = [], typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        options = typing.get_args(hints[f.name]) or (hints[f.name],)
        if f.name == "rewards":
            options = typing.get_args(hints[f.name])
        section = next((t for t in options if dataclasses.is_dataclass(t)), None)
        out += settings(section, f"{prefix}{f.name}.") if section else [prefix + f.name]
    return out


def test_every_setting_is_read_outside_the_schema():
    code = "\n".join(p.read_text() for p in PACKAGE.rglob("*.py") if p.name not in SCHEMA_MODULES)
    unread = [name for name in settings() if not re.search(rf"\.{re.escape(name.split('.')[-1])}\b", code)]
    assert not unread, f"settings nothing reads: {unread}"


def test_the_schema_has_the_settings_it_documents():
    names = settings()
    assert len(names) == len(set(names)) and "reinforce.candidates.num_samples" in names
    assert not {f"reinforce.{old}" for old in MOVED} & set(names)  # (a leaf of the old layout)


@pytest.mark.parametrize("old", sorted(MOVED))
def test_each_old_reinforce_key_names_its_new_place(old, tiny_recipe):
    tiny_recipe["reinforce"] = {old: 2}
    with pytest.raises(ConfigError, match=rf"^reinforce\.{old} moved to reinforce\.{re.escape(MOVED[old])} "):
        from_dict(tiny_recipe)


@pytest.mark.parametrize("gone", sorted(REMOVED))
def test_removed_settings_say_why(gone, tiny_recipe):
    tiny_recipe["reinforce"] = {gone: 1}
    with pytest.raises(ConfigError, match=rf"^reinforce\.{gone} was removed: "):
        from_dict(tiny_recipe)
