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
    ("meanflow.objective=imf2",
     "meanflow.objective='imf2': Input should be 'meanflow', 'mmf', 'splitmeanflow', 'alphaflow' or 'imf'"),
    ("meanflow.dudt=fd", "meanflow.dudt='fd': Input should be 'jvp' or 'finite_difference'"),
    ("meanflow.fd_step=0", "meanflow.fd_step='0': Input should be greater than 0"),
    ("meanflow.beta=1.5", "meanflow.beta='1.5': Input should be less than or equal to 1"),
    ("meanflow.mmf_lambda=-0.1", "meanflow.mmf_lambda='-0.1': Input should be greater than or equal to 0"),
    ("meanflow.mmf_warmup=-5", "meanflow.mmf_warmup='-5': Input should be greater than or equal to 0"),
])
def test_bad_overrides_name_the_problem(override, message):
    with pytest.raises(ConfigError) as err:
        with_overrides(RunConfig(), [override])
    assert message in str(err.value)


@pytest.mark.parametrize("overrides, message", [
    (["meanflow.objective=mmf", "meanflow.dudt=finite_difference"], "needs dudt='jvp'"),
    (["meanflow.objective=splitmeanflow", "meanflow.beta=0.9"], "so beta (beta=0.9) would have no effect"),
    (["meanflow.objective=splitmeanflow", "meanflow.dudt=finite_difference", "meanflow.tangent=(v,1,1)"],
     "so dudt, tangent (dudt='finite_difference', tangent='(v,1,1)') would have no effect"),
])
def test_objective_options_that_cannot_act_are_refused(overrides, message):
    with pytest.raises(ConfigError, match=message.replace("(", "\\(").replace(")", "\\)")):
        with_overrides(RunConfig(), overrides)
    with_overrides(RunConfig(), overrides[:1])  # the objective alone is fine


def test_config_is_frozen():
    with pytest.raises(ValidationError, match="frozen"):
        RunConfig().meanflow.ratio = 0.3


def test_describe_covers_every_flattened_key():
    assert [key for key, _, _ in describe()] == list(flatten(RunConfig()))
    assert all(doc for _, _, doc in describe())
