"""Experiment grids: names, values, bad input (the queue itself is exercised end to end)."""

import pytest
from typer.testing import CliRunner

from dcm.cli import app
from dcm.experiments import ablation_grid, boundary_grid, parse_values


def test_ablation_grid_is_the_papers_table_3():
    grid = dict(ablation_grid())
    assert list(grid) == ["none", "od", "od-pe", "od-pe-tc", "od-pe-gf", "od-pe-tc-gf"]
    assert grid["none"] == {"ablation.od": "false", "ablation.pe": "false", "ablation.tc": "false",
                            "ablation.gf": "false"}
    assert grid["od-pe-gf"]["ablation.gf"] == "true" and grid["od-pe-gf"]["ablation.tc"] == "false"


@pytest.mark.parametrize("text, values", [("30,35,40", [30, 35, 40]), ("20:45:5", [20, 25, 30, 35, 40]),
                                          ("30:33", [30, 31, 32])])
def test_boundary_values_from_a_list_or_a_range(text, values):
    assert parse_values(text) == values


def test_seed_grid_and_seeds_crossed_with_another_grid():
    from dcm.config import Params
    from dcm.experiments import named_grid

    assert named_grid("seeds", None, Params()) == [("seed-0", {"distill.seed": 0}), ("seed-1", {"distill.seed": 1}),
                                                   ("seed-2", {"distill.seed": 2})]
    crossed = dict(named_grid("boundary", "30,35", Params(), seeds="0,1"))
    assert list(crossed) == ["boundary-30-s0", "boundary-30-s1", "boundary-35-s0", "boundary-35-s1"]
    assert crossed["boundary-35-s1"] == {"boundary": 35, "distill.seed": 1}


def test_boundary_outside_the_grid_is_refused_before_queueing():
    from dcm.config import Params

    with pytest.raises(ValueError, match=r"\[60\]"):
        boundary_grid([30, 60], Params())


def test_cli_grid_rejects_unknown_grid_and_bad_values(tmp_path):
    runner = CliRunner()
    params = tmp_path / "params.yaml"
    params.write_text("{}\n")
    result = runner.invoke(app, ["grid", "sizes", "-p", str(params)])
    assert result.exit_code == 2 and "unknown grid" in result.output
    result = runner.invoke(app, ["grid", "boundary", "--values", "0,30", "-p", str(params)])
    assert result.exit_code == 2 and "outside the grid" in result.output
