"""Network registry: name -> constructor(data_shape, num_classes, time_cond, **arch_options).

Architecture options are keyword-only and have no defaults here: their defaults and bounds live
in workbench/config/ (net.mlp, net.unet, net.songunet, net.dit). Every network is called net(z, t, r, labels=None)
and returns the average velocity u, shaped like z; built with v_head=True (net.v_head), net(..., head="v") returns
iMF's auxiliary instantaneous velocity from a second copy of its output layers.
"""
from .dit import DiT
from .mlp import MLP
from .songunet import SongUNet
from .unet import UNet

NETWORKS = {"mlp": MLP, "unet": UNet, "songunet": SongUNet, "dit": DiT}
