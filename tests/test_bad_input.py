"""Property-based bad input (hypothesis): `--set`, study files and [search] sections either load or fail
with the project's own error naming the problem; never another exception, never a traceback from the
CLI, never a file written. Examples are derandomized (the same ones every run, so CI does not flake); to hunt
for new ones, drop derandomize=True and run with --hypothesis-seed=N."""
import tomllib
from pathlib import Path

import tomli_w
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from workbench.cli import app
from workbench.config import ConfigError, RunConfig, describe, with_overrides
from workbench.study.study import StudyError, parse_study_text

KEYS = [key for key, _, _ in describe()]
keys = st.one_of(st.sampled_from(KEYS), st.text(st.characters(blacklist_characters="="), max_size=20),  # KEY=VALUE
                 st.sampled_from(KEYS).map(lambda k: k + "x"), st.sampled_from(KEYS).map(lambda k: k.split(".")[0]))
texts = st.text(alphabet=st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00"), max_size=20)
values = st.one_of(texts, st.integers(-10**6, 10**6).map(str), st.floats(allow_nan=True).map(str),
                   st.sampled_from(["true", "none", "1,2", "(v,0,1)", "lognorm(-0.4,1.0)", "uniform(1,0)", ""]))
toml_values = st.recursive(st.one_of(st.booleans(), st.integers(-10**6, 10**6), st.floats(allow_nan=False), texts),
                           lambda inner: st.lists(inner, max_size=3) | st.dictionaries(texts, inner, max_size=3),
                           max_leaves=6)

VALID = tomllib.loads("""
name = "s"
metric = "energy_1nfe"
seeds = [0]
[base]
"data.name" = "moons"
"train.steps" = 10
"eval.every" = 5
[[axes]]
key = "meanflow.ratio"
values = [0.0, 0.5]
[search]
trials = 3
[search.space]
"meanflow.ratio" = {low = 0.1, high = 1.0}
""")


@settings(max_examples=300, deadline=None, derandomize=True, database=None)
@given(keys, values)
def test_set_overrides_load_or_raise_a_config_error_naming_the_key(key, value):
    try:
        with_overrides(RunConfig(), [f"{key}={value}"])
    except ConfigError as err:
        named = {key.strip(), *key.strip().split(".")}  # the key (stripped), or the part of it that is wrong
        assert any(repr(part)[1:-1] in str(err) for part in named) or "is not KEY=VALUE" in str(err), str(err)


@settings(max_examples=40, deadline=None, derandomize=True, database=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(keys, values)
def test_the_cli_answers_any_set_with_exit_0_or_2_never_a_traceback(tmp_path, key, value):
    result = CliRunner().invoke(app, ["train", "--dry-run", "--run-dir", str(tmp_path / "run"), "--set", f"{key}={value}"])
    assert result.exit_code in (0, 2), result.output
    assert result.exception is None or isinstance(result.exception, SystemExit), repr(result.exception)
    assert result.exit_code == 0 or result.output.startswith("error: ")
    assert not list(tmp_path.iterdir())


def mutate(raw: dict, path: list, value):
    """raw with the entry at `path` (keys into dicts, indices into lists) replaced by value."""
    copy = tomllib.loads(tomli_w.dumps(raw))
    node = copy
    for part in path[:-1]:
        node = node[part]
    node[path[-1]] = value
    return copy


PATHS = [["name"], ["metric"], ["seeds"], ["seeds", 0], ["budget_minutes"], ["base"], ["base", "data.name"],
         ["base", "train.steps"], ["base", "eval.every"], ["axes"], ["axes", 0, "key"], ["axes", 0, "values"],
         ["axes", 0, "values", 1], ["search", "trials"], ["search", "sampler"], ["search", "pruner"],
         ["search", "metric"], ["search", "seeds"], ["search", "space"], ["search", "space", "meanflow.ratio"],
         ["search", "space", "meanflow.ratio", "low"], ["search", "space", "meanflow.ratio", "high"],
         ["search", "space", "meanflow.ratio", "log"], ["search", "space", "meanflow.ratio", "step"],
         ["search", "space", "meanflow.ratio", "choices"], ["search", "space", "meanflow.ratio", "template"]]


@settings(max_examples=300, deadline=None, derandomize=True, database=None)
@given(st.sampled_from(PATHS), toml_values)
def test_a_mutated_study_file_loads_or_fails_naming_the_file(path, value):
    text = tomli_w.dumps(mutate(VALID, path, value))
    try:
        parse_study_text(text, Path("studies/s.toml"))
    except StudyError as err:
        assert str(err).startswith("studies/s.toml: "), str(err)


@settings(max_examples=300, deadline=None, derandomize=True, database=None)
@given(st.dictionaries(keys, st.dictionaries(st.sampled_from(["low", "high", "log", "step", "choices", "type",
                                                              "template", "params"]), toml_values, max_size=4),
                       min_size=1, max_size=3))
def test_random_search_spaces_load_or_fail_naming_the_file(space):
    raw = mutate(VALID, ["search", "space"], space)
    try:
        parse_study_text(tomli_w.dumps(raw), Path("studies/s.toml"))
    except StudyError as err:
        assert str(err).startswith("studies/s.toml: "), str(err)
