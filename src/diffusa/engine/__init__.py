"""The one training engine (`Engine`) and the contract a kind of training fulfils (`Task`)."""

from diffusa.engine.loop import Engine, leave_distributed, lr_at, step_seed
from diffusa.engine.task import StepLoss, Task

__all__ = ["Engine", "StepLoss", "Task", "leave_distributed", "lr_at", "step_seed"]
