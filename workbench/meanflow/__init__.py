"""The MeanFlow science in pure torch: time sampler, objective, samplers, networks. No I/O."""
from .conditioning import TIME_CONDITIONINGS
from .dudt import JVP_MODES, TANGENTS, central_difference
from .loss import adaptive_weight, guided_velocity, meanflow_loss
from .networks import NETWORKS
from .objectives import OBJECTIVES, objective_conflict
from .sampling import sample, time_schedule
from .time import parse_time_dist, sample_t_r, sample_time

__all__ = [
    "JVP_MODES", "NETWORKS", "OBJECTIVES", "TANGENTS", "TIME_CONDITIONINGS", "adaptive_weight", "central_difference",
    "guided_velocity", "meanflow_loss", "objective_conflict", "parse_time_dist", "sample", "sample_t_r", "sample_time",
    "time_schedule",
]
