"""Study files: grid expansion and validation (pure functions)."""
from pathlib import Path

import pytest

from workbench.study.study import StudyError, load_study, parse_study, parse_study_text, study_file_text

SHIPPED = sorted(p for p in Path(__file__).parent.parent.joinpath("studies").glob("*.toml") if p.stem != "calibration")


def raw(**overrides):
    study = {"name": "s", "metric": "energy_1nfe", "seeds": [0, 1, 2],
             "base": {"data.name": "moons", "train.steps": 10},
             "axes": [{"key": "meanflow.ratio", "values": [0.0, 0.25, 1.0]}]}
    return {**study, **overrides}


def test_grid_is_product_of_axes_times_seeds():
    study = parse_study(raw(axes=[{"key": "meanflow.ratio", "values": [0.0, 0.25, 1.0]},
                                  {"key": "net.time_cond", "values": ["(t,r)", "t-r"]}]), Path("s.toml"))
    cells = study.cells()
    assert len(cells) == 3 * 2 * 3
    assert len({cell.key for cell in cells}) == len(cells)  # distinct configs, seed included
    first = cells[0]
    assert first.config.meanflow.ratio == 0.0 and first.config.net.time_cond == "(t,r)" and first.seed == 0
    assert first.config.data.name == "moons" and first.config.train.seed == 0
    assert first.run_name == "ratio=0.0 time_cond=(t,r) seed=0"


def test_axis_with_coupled_keys_and_labels():
    study = parse_study(raw(axes=[{"key": ["meanflow.cfg_kappa", "meanflow.cfg_omega"],
                                   "values": [[0.0, 2.0], [0.5, 1.0]], "labels": ["k=0", "k=0.5"],
                                   "paper": [20.15, 19.15]}], seeds=[0]), Path("s.toml"))
    cells = study.cells()
    assert [(c.config.meanflow.cfg_kappa, c.config.meanflow.cfg_omega) for c in cells] == [(0.0, 2.0), (0.5, 1.0)]
    assert cells[1].run_name == "cfg_kappa=k=0.5 seed=0"
    assert study.axes[0].paper == (20.15, 19.15)


def test_same_config_same_key_across_studies():
    a = parse_study(raw(name="a"), Path("a.toml")).cells()
    b = parse_study(raw(name="b", seeds=[2, 0]), Path("b.toml")).cells()
    assert {c.key for c in b} < {c.key for c in a}


@pytest.mark.parametrize("change, message", [
    ({"colour": "red"}, "colour: unknown key"),
    ({"seeds": []}, "seeds: [] must be a non-empty list"),
    ({"seeds": [0, 0]}, "distinct"),
    ({"name": "Bad Name"}, "name: 'Bad Name' must match"),
    ({"axes": []}, "axes: needs at least one"),
    ({"axes": [{"key": "meanflow.ratio", "values": [0.1], "labels": ["a", "b"]}]}, "axes[0].labels: needs one entry per value"),
    ({"axes": [{"key": "meanflow.ratio", "values": [0.1], "colour": 1}]}, "axes[0].colour: unknown key"),
    ({"axes": [{"key": ["meanflow.ratio", "train.steps"], "values": [0.1]}]}, "every value must be a list of 2"),
    ({"axes": [{"key": "meanflow.ratio", "values": [0.1, 2.0]}]}, "meanflow.ratio=2.0: Input should be less than or equal to 1"),
    ({"axes": [{"key": "meanflow.ratoi", "values": [0.1]}]}, "unknown key 'meanflow.ratoi'"),
])
def test_validation_names_file_key_and_value(change, message):
    with pytest.raises(StudyError) as err:
        parse_study(raw(**change), Path("studies/x.toml")).cells()
    assert "studies/x.toml" in str(err.value) and message in str(err.value)


def test_missing_study_and_bad_toml(tmp_path):
    with pytest.raises(StudyError, match="not found"):
        load_study("no-such-study")
    (tmp_path / "bad.toml").write_text("name = ")
    with pytest.raises(StudyError, match="not valid TOML"):
        load_study(tmp_path / "bad.toml")


@pytest.mark.parametrize("path", SHIPPED, ids=[p.stem for p in SHIPPED])
def test_shipped_studies_validate(path):
    study = load_study(path)
    assert study.name == path.stem and study.description and study.cells()


def test_shipped_calibration_plan_and_every_budgets_studies_validate(tmp_path):
    from workbench.study.derived import derived_study
    from workbench.study.plan import load_plan

    plan = load_plan(Path(__file__).parent.parent / "studies" / "calibration.toml")
    assert set(plan.chosen) == set(plan.studies)
    for budget, name in plan.pairs():
        # validates every cell's config and that each shipped study carries its chosen budget; writes nothing
        path, text = derived_study(plan, budget, name, tmp_path)
        assert (text is None) == plan.is_chosen(budget, name)
    assert not list(tmp_path.iterdir())


def test_extends_puts_the_files_base_under_the_studys_own(tmp_path):
    (tmp_path / "bases").mkdir()
    (tmp_path / "bases" / "shared.toml").write_text('[base]\n"data.name" = "moons"\n"train.steps" = 7\n"train.batch_size" = 16\n')
    (tmp_path / "s.toml").write_text('name = "s"\nmetric = "energy_1nfe"\nseeds = [0]\nextends = "bases/shared.toml"\n'
                                     '[base]\n"train.steps" = 9\n[[axes]]\nkey = "meanflow.ratio"\nvalues = [0.0, 1.0]\n')
    study = load_study(tmp_path / "s.toml")
    config = study.cells()[0].config
    assert (config.data.name, config.train.steps, config.train.batch_size) == ("moons", 9, 16)
    # the file logged with the parent run is the resolved study: it gives the same cells on its own
    again = parse_study_text(study_file_text(study), tmp_path / "elsewhere" / "s.toml")
    assert [c.key for c in again.cells()] == [c.key for c in study.cells()]


@pytest.mark.parametrize("extended, message", [
    (None, "extends: 'bases/shared.toml' not found"),
    ('name = "x"\n[base]\n"train.steps" = 7\n', "holds one [base] table, found keys ['base', 'name']"),
])
def test_a_bad_extends_names_the_file(tmp_path, extended, message):
    if extended is not None:
        (tmp_path / "bases").mkdir()
        (tmp_path / "bases" / "shared.toml").write_text(extended)
    (tmp_path / "s.toml").write_text('name = "s"\nmetric = "energy_1nfe"\nseeds = [0]\nextends = "bases/shared.toml"\n'
                                     '[[axes]]\nkey = "meanflow.ratio"\nvalues = [0.0]\n')
    with pytest.raises(StudyError) as err:
        load_study(tmp_path / "s.toml")
    assert message in str(err.value)


@pytest.mark.parametrize("change, message", [
    ({"seeds": "0,1"}, "seeds: Input should be a valid list (got '0,1')"),
    ({"budget_minutes": -1}, "budget_minutes: Input should be greater than or equal to 0 (got -1)"),
    ({"axes": [{"values": [0.1]}]}, "axes[0].key: missing (required: key, values)"),
    ({"axes": [{"key": "meanflow.ratio", "values": [0.1], "name": "a b"}]}, "axes[0].name: String should match"),
])
def test_schema_errors_name_key_value_and_rule(change, message):
    with pytest.raises(StudyError) as err:
        parse_study(raw(**change), Path("studies/x.toml"))
    assert str(err.value).startswith("studies/x.toml: ") and message in str(err.value)


def test_keys_added_later_leave_the_hash_of_a_cell_that_does_not_set_them():
    """A config at the defaults of data.hflip, data.augment_p, train.ema_decays, ... and net.songunet.* hashes as it
    did before those keys existed (e041d1a: 459e40cf64fd for quick's first cell), so a rerun of an old study
    finds its recorded cells; setting one of them changes the hash."""
    from workbench.config import with_overrides
    from workbench.study.study import config_hash

    cell = load_study("quick").cells()[0]
    assert cell.key == "459e40cf64fd"
    assert config_hash(with_overrides(cell.config, {"train.ema_decays": "0.5"})) != cell.key
    for later in ({"meanflow.objective": "alphaflow", "meanflow.alphaflow.end": 100}, {"meanflow.curriculum.steps": 100},
                  {"meanflow.objective": "imf", "meanflow.imf.tangent": "v"}):
        assert config_hash(with_overrides(cell.config, later)) != cell.key
