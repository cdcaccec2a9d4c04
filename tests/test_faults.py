"""Faults a long run meets (issue 34): messages cut to one line at a sentence's end, never inside one."""

from __future__ import annotations

import warnings

import pytest
import yaml

from conftest import TINY_CONFIGS
from seqrl.cli import main
from seqrl.errors import first_sentence


def test_first_sentence_ends_at_a_sentence_not_inside_one():
    assert first_sentence("it holds 54 tensors (e.g. model.encoder.weight). It is damaged") == \
        "it holds 54 tensors (e.g. model.encoder.weight)"
    assert first_sentence("lr 1.5 is over 1.0 (i.e. too big). Lower it.") == "lr 1.5 is over 1.0 (i.e. too big)"
    assert first_sentence("cannot read /runs/a.b/model.safetensors. Check the path") == \
        "cannot read /runs/a.b/model.safetensors"
    assert first_sentence("Error(s) in loading:\n\tMissing key(s): \"a.b\". ") == 'Error(s) in loading: Missing key(s): "a.b"'
    assert first_sentence("see no. 5 and J. Smith. Next") == "see no. 5 and J. Smith"
    long = first_sentence("word " * 100, limit=40)
    assert long == "word word word word word word word word ..."


@pytest.mark.parametrize("debug", [False, True])
def test_library_warnings_only_under_debug(tiny_recipe, tmp_path, debug):
    """A GPT-2 LoRA run: peft warns that it sets fan_in_fan_out for Conv1D, which the user can do
    nothing about; shown with --debug only."""
    tiny_recipe["model"] = {"architecture": "gpt2", "config": dict(TINY_CONFIGS["gpt2"]), "lora": {"rank": 2}}
    tiny_recipe["schedule"]["xent_steps"] = 1
    tiny_recipe["data"]["test_split"] = None
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(tiny_recipe))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert main((["--debug"] if debug else []) + ["finetune", str(path)]) == 0
    shown = [str(w.message) for w in caught if "fan_in_fan_out" in str(w.message)]
    assert bool(shown) == debug, shown
