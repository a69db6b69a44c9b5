"""More than one training process (``trainer.strategy: ddp``): Lightning starts them, everything else
asks here which process it is.

``launch`` runs at the start of ``roadwork train``, before extraction, so that extraction shards
across the processes too: Lightning's launcher starts the other processes by running the same
command again (with LOCAL_RANK set), and every later Trainer joins the same process group. Every
process then follows the same steps on the same data; files are written by process 0 only, with a
barrier wherever another process reads them next.
"""

from __future__ import annotations

import torch
from lightning.fabric import Fabric
from lightning.fabric.strategies import DDPStrategy

from roadwork.config import TrainerConfig


def launch(config: TrainerConfig, device: str) -> None:
    """Start the ``config.devices`` processes of a ddp run (a no-op for one process)."""
    if config.strategy != "ddp" or config.devices < 2 or initialized():
        return
    accelerator = "cuda" if str(device).startswith("cuda") else "cpu"
    backend = "nccl" if accelerator == "cuda" else "gloo"
    Fabric(accelerator=accelerator, devices=config.devices,
           strategy=DDPStrategy(process_group_backend=backend)).launch()


def initialized() -> bool:
    return torch.distributed.is_available() and torch.distributed.is_initialized()


def rank_and_world() -> tuple[int, int]:
    if initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return 0, 1


def is_main() -> bool:
    return rank_and_world()[0] == 0


def barrier() -> None:
    """Wait for every process (a no-op for one)."""
    if initialized():
        torch.distributed.barrier()
