"""Training a transform network to paint any photo in the style of one artwork (Johnson et al.).

`prepare_training` checks a job and reads its inputs; `run_training` trains it. One concern a
module:

    plan.py          prepare_training, TrainingPlan: the checks before any work
    loop.py          run_training, TrainResult: the network, the losses, the optimizer steps
    data.py          the data folder and the stream of samples (order and crops), resumable
    distributed.py   torchrun processes, the process group, DDP, Ctrl-C
    checkpoints.py   the checkpoint (format, atomic save, random states, resume checks) and
                     the loss log
    failures.py      failures in words (a full disk, out of memory) and the error of a run
                     that stopped, saying where to resume from

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
from stylize.engine.training.failures import (
    DISK_FULL,
    CheckpointWriteError,
    TrainingStopped,
    disk_full_reason,
    failure_reason,
    resume_advice,
)
from stylize.engine.training.loop import (
    THUMBNAIL_LONG_EDGE,
    ProgressCallback,
    TrainResult,
    WarningCallback,
    run_training,
)
from stylize.engine.training.plan import (
    FEW_IMAGES,
    PREVIEW_FOLDER,
    PREVIEW_LONG_EDGE,
    TrainingPlan,
    min_network_input,
    prepare_training,
)

__all__ = [
    "CHECKPOINT_FILE",
    "CHECKPOINT_FORMAT",
    "DISK_FULL",
    "FEW_IMAGES",
    "LOSS_LOG_COLUMNS",
    "LOSS_LOG_FILE",
    "PREVIEW_FOLDER",
    "PREVIEW_LONG_EDGE",
    "THUMBNAIL_LONG_EDGE",
    "CheckpointWriteError",
    "Processes",
    "ProgressCallback",
    "TrainResult",
    "TrainSchedule",
    "TrainSettings",
    "TrainingData",
    "TrainingPlan",
    "TrainingStopped",
    "WarningCallback",
    "disk_full_reason",
    "epoch_order",
    "failure_reason",
    "min_network_input",
    "prepare_training",
    "resume_advice",
    "run_training",
    "scan_training_data",
]
