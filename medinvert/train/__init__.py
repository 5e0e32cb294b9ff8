"""Training of the conditional noise predictor (single process or torchrun DDP).

    TrainConfig, train      -- medinvert.train.loop
    init_distributed        -- medinvert.train.distributed
"""

from medinvert.train.distributed import DistContext, init_distributed, shutdown_distributed
from medinvert.train.loop import DEFAULT_ARCHITECTURE, TrainConfig, train

__all__ = ["DEFAULT_ARCHITECTURE", "DistContext", "TrainConfig", "init_distributed", "shutdown_distributed", "train"]
