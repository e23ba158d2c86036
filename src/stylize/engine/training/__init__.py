"""Training a transform network to paint any photo in the style of one artwork (Johnson et al.).

`prepare_training` checks a job and reads its inputs; `run_training` trains it. One concern a
module:

    plan.py          prepare_training, TrainingPlan: the checks before any work
    loop.py          run_training, TrainResult: the network, the losses, the optimizer steps
    data.py          the data folder and the stream of samples (order and crops), resumable
    distributed.py   torchrun processes, the process group, DDP, Ctrl-C
    checkpoints.py   the checkpoint (format, atomic save, random states, resume checks) and
                     the loss log

The settings that decide the weights (`TrainSettings`) and how long a run lasts
(`TrainSchedule`) are in stylize.engine.settings, which imports no torch.
"""

from stylize.engine.settings import TrainSchedule, TrainSettings
from stylize.engine.training.checkpoints import (
    CHECKPOINT_FILE,
    CHECKPOINT_FORMAT,
    LOSS_LOG_COLUMNS,
    LOSS_LOG_FILE,
)
from stylize.engine.training.data import TrainingData, epoch_order, scan_training_data
from stylize.engine.training.distributed import Processes
from stylize.engine.training.loop import (
    PREVIEW_FOLDER,
    THUMBNAIL_LONG_EDGE,
    ProgressCallback,
    TrainResult,
    run_training,
)
from stylize.engine.training.plan import (
    FEW_IMAGES,
    PREVIEW_LONG_EDGE,
    TrainingPlan,
    prepare_training,
)

__all__ = [
    "CHECKPOINT_FILE",
    "CHECKPOINT_FORMAT",
    "FEW_IMAGES",
    "LOSS_LOG_COLUMNS",
    "LOSS_LOG_FILE",
    "PREVIEW_FOLDER",
    "PREVIEW_LONG_EDGE",
    "THUMBNAIL_LONG_EDGE",
    "Processes",
    "ProgressCallback",
    "TrainResult",
    "TrainSchedule",
    "TrainSettings",
    "TrainingData",
    "TrainingPlan",
    "epoch_order",
    "prepare_training",
    "run_training",
    "scan_training_data",
]
