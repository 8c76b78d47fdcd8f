"""One model's spec, found by its name and checked as `validate` checks it, without loading its neighbours."""

from __future__ import annotations

import pytest

from mlplatform.specs import SpecError, declared_names, load_spec_named
from mlplatform_tests.conftest import TOY_SPEC, toy_rows


def test_a_broken_neighbour_does_not_block_the_model_asked_for(spec_dir):
    folder = spec_dir({"toy.yaml": TOY_SPEC, "broken.yaml": "name: other\ntask: [\n", "list.yaml": "- a\n- b\n",
                       ".toy.yaml.swp": "name: toy\n"}, {"toy.csv": toy_rows()})
    assert declared_names(folder) == {"toy": folder / "toy.yaml"}
    spec = load_spec_named(folder, "toy")
    assert spec.name == "toy" and spec.spec_file == (folder / "toy.yaml").resolve()


def test_an_unknown_name_and_a_broken_spec_are_told_apart(spec_dir):
    folder = spec_dir({"toy.yaml": TOY_SPEC.replace("target: y", "target: yy")}, {"toy.csv": toy_rows()})
    with pytest.raises(ValueError, match=f"no model spec named 'nope' in {folder}"):
        load_spec_named(folder, "nope")
    with pytest.raises(SpecError) as raised:
        load_spec_named(folder, "toy")
    assert any("target: found 'yy'" in str(problem) for problem in raised.value.problems)
