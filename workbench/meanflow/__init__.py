"""The MeanFlow science in pure torch: time sampler, objective, samplers, networks. No I/O."""
from .conditioning import TIME_CONDITIONINGS
from .loss import TANGENTS, adaptive_weight, guided_velocity, meanflow_loss
from .networks import NETWORKS
from .sampling import index_noise, sample_euler, sample_meanflow, time_schedule
from .time import parse_time_dist, sample_t_r, sample_time

__all__ = [
    "NETWORKS", "TANGENTS", "TIME_CONDITIONINGS", "adaptive_weight", "guided_velocity", "index_noise",
    "meanflow_loss", "parse_time_dist", "sample_euler", "sample_meanflow", "sample_t_r", "sample_time",
    "time_schedule",
]
