"""Config: dotted overrides and errors that name the key, value and what is allowed."""
import pytest
from pydantic import ValidationError

from workbench.config import ConfigError, RunConfig, describe, flatten, with_overrides


def test_overrides_are_typed():
    config = with_overrides(RunConfig(), ["meanflow.ratio=0.5", "net.unet.channel_mult=1,2,2", "data.download=true",
                                          "optim.betas=(0.9,0.95)", "meanflow.t_dist=lognorm(-2, 2)"])
    assert config.meanflow.ratio == 0.5
    assert config.net.unet.channel_mult == (1, 2, 2)
    assert config.data.download is True
    assert config.optim.betas == (0.9, 0.95)
    assert config.meanflow.t_dist == "lognorm(-2,2)"


@pytest.mark.parametrize("override, message", [
    ("meanflow.ratio=1.5", "meanflow.ratio='1.5': Input should be less than or equal to 1"),
    ("meanflow.ratoi=1", "unknown key 'meanflow.ratoi': meanflow has keys ratio, "),
    ("net.arch=vit", "net.arch='vit': Input should be 'mlp', 'unet', 'songunet' or 'dit'"),
    ("meanflow.tangent=(v,0,2)", "meanflow.tangent='(v,0,2)': Input should be '(v,0,1)', '(v,0,0)', '(v,1,0)' or '(v,1,1)'"),
    ("meanflow.t_dist=gauss(0,1)", "meanflow.t_dist='gauss(0,1)': time distribution"),
    ("train.steps=ten", "train.steps='ten': Input should be a valid integer"),
    ("data.name=imagenet", "data.name='imagenet': Input should be 'checkerboard'"),
    ("meanflow=1", "'meanflow' is a section"),
    ("ratio", "override 'ratio' is not KEY=VALUE"),
])
def test_bad_overrides_name_the_problem(override, message):
    with pytest.raises(ConfigError) as err:
        with_overrides(RunConfig(), [override])
    assert message in str(err.value)


def test_config_is_frozen():
    with pytest.raises(ValidationError, match="frozen"):
        RunConfig().meanflow.ratio = 0.3


def test_describe_covers_every_flattened_key():
    assert [key for key, _, _ in describe()] == list(flatten(RunConfig()))
    assert all(doc for _, _, doc in describe())
