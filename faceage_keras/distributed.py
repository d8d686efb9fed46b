"""Data-parallel training on `torch.distributed`: process group, DDP train step, sharded data.

`torchrun` starts one process per device and sets `RANK`, `WORLD_SIZE`,
`LOCAL_RANK`, `MASTER_ADDR` and `MASTER_PORT`. Each process builds the same
model, and `install_ddp_train_step` wraps it in
`torch.nn.parallel.DistributedDataParallel`. A Keras 3 model on the torch
backend is a `torch.nn.Module` whose `forward` runs the Keras `__call__`, so
the train step runs the forward pass through the DDP wrapper, and DDP's
reducer averages the gradients across processes during `loss.backward()`.
Every process then applies the same averaged gradients with its own copy of
the Keras optimizer, so the weights stay identical.
"""

import dataclasses
import logging
import os

import keras
import numpy as np
import timm.utils
import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel

from faceage_keras.backbone import TimmBackbone
from faceage_keras.dataset import FaceDataset

logger = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class ProcessContext:
    """The place of this process in a distributed run; one process without torchrun.

    Attributes:
        rank: int. Global index of this process, 0 for the main process.
        world_size: int. Number of processes.
        local_rank: int. Index of this process on its node, which is also its
            GPU index.
    """

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self):
        return self.rank == 0

    @property
    def is_distributed(self):
        return self.world_size > 1

    def share(self, value):
        """Return the main process's `value` on every process (a broadcast of any picklable object)."""
        if not self.is_distributed:
            return value
        box = [value]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def barrier(self):
        """Wait until every process reaches this point."""
        if self.is_distributed:
            dist.barrier()


def start_process_group():
    """Join the process group that torchrun describes in the environment.

    Uses NCCL when CUDA is available and gloo otherwise, and makes GPU
    `LOCAL_RANK` the current device, so Keras places this process's tensors
    there. Without torchrun's variables, or with `WORLD_SIZE=1`, nothing is
    started.

    Returns:
        `(context, started)`: the `ProcessContext`, and whether this call
        started the group (and so should end it with `end_process_group`).
    """
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size <= 1:
        return ProcessContext(), False

    context = ProcessContext(
        rank=int(os.environ["RANK"]), world_size=world_size, local_rank=int(os.environ.get("LOCAL_RANK", "0"))
    )
    if dist.is_initialized():
        return context, False
    if torch.cuda.is_available():
        torch.cuda.set_device(context.local_rank)
        backend = "nccl"
    else:
        backend = "gloo"
    dist.init_process_group(backend)
    _quiet_other_ranks(context)
    logger.info("Process group started: %d processes, backend %s.", world_size, backend)
    return context, True


def end_process_group():
    if dist.is_initialized():
        dist.destroy_process_group()


def _quiet_other_ranks(context):
    # Only the main process reports progress; the others log problems only.
    if context.is_main:
        return
    package_logger = logging.getLogger("faceage_keras")
    package_logger.setLevel(logging.WARNING)
    for handler in package_logger.handlers:
        handler.setFormatter(logging.Formatter(f"[rank {context.rank}] %(message)s"))


def install_ddp_train_step(model, context):
    """Make `model.fit` train with gradients averaged across processes by DDP.

    Wraps `model` in `DistributedDataParallel`, which broadcasts the main
    process's weights at once, and replaces `model.train_step` with one that
    runs the forward pass through the wrapper. Call it after `compile` and
    after restoring a checkpoint.

    NOTE: DDP does not see the BatchNorm running statistics of the timm
    backbone: they are buffers of a torch module inside a Keras layer, and
    Keras layers are not torch child modules of a functional model, so
    `model.buffers()` is empty. `SyncProcesses` averages them at the end of
    each epoch instead. Batch statistics in training mode are per process, as
    in DDP without SyncBatchNorm.

    Returns:
        The `DistributedDataParallel` wrapper.
    """
    device_ids = [context.local_rank] if torch.cuda.is_available() else None
    wrapper = DistributedDataParallel(model, device_ids=device_ids)

    def train_step(data):
        return _ddp_train_step(model, wrapper, data)

    # An instance attribute, so Keras' `make_train_function` calls it in place of the class's `train_step`.
    model.train_step = train_step
    return wrapper


def _ddp_train_step(model, wrapper, data):
    # Follows `TorchTrainer.train_step` of Keras 3.15, with the forward pass run
    # through `wrapper` so that DDP's reducer hooks into the backward pass.
    x, y, sample_weight = keras.utils.unpack_x_y_sample_weight(data)
    y_pred = wrapper(x, training=True)
    model.zero_grad()

    loss = model._compute_loss(x=x, y=y, y_pred=y_pred, sample_weight=sample_weight, training=True)
    batch_size = next(tensor for tensor in keras.tree.flatten(x) if tensor is not None).shape[0]
    model._loss_tracker.update_state(loss, sample_weight=batch_size)
    loss = model.optimizer.scale_loss(loss)

    # DDP averages the gradients across processes inside `backward`.
    loss.backward()
    weights = model.trainable_weights[:]
    gradients = [variable.value.grad for variable in weights]
    with torch.no_grad():
        model.optimizer.apply(gradients, weights)
    return model.compute_metrics(x, y, y_pred, sample_weight=sample_weight)


class ShardedFaceDataset(FaceDataset):
    """A training `FaceDataset` that yields one process's share of each epoch.

    All processes draw the same shuffled order of the epoch (seeded with
    `seed` and the epoch), cut it into `world_size` equal parts and keep part
    `rank`, so the parts are disjoint and every process runs the same number
    of batches. The at most `world_size - 1` faces left over by the cut
    change from epoch to epoch with the shuffle. Augmentation draws from a
    generator seeded with the rank too, so processes augment differently.

    Args:
        table, task: as for `FaceDataset`.
        rank: int. Index of this process.
        world_size: int. Number of processes.
        **kwargs: `FaceDataset` arguments; `training` must be True.
    """

    def __init__(self, table, task, *, rank, world_size, **kwargs):
        if not kwargs.get("training", False):
            raise ValueError("ShardedFaceDataset is for training data; pass training=True.")
        if not 0 <= rank < world_size:
            raise ValueError(f"`rank` must be in [0, {world_size}). Received: rank={rank}")
        if len(table) < 2 * world_size:
            raise ValueError(
                f"{len(table)} training faces cannot be split across {world_size} processes with at least "
                f"2 faces each. Use fewer processes or more data."
            )
        self.rank = int(rank)
        self.world_size = int(world_size)
        super().__init__(table, task, **kwargs)

    def _epoch_order(self):
        order = super()._epoch_order()
        per_rank = len(order) // self.world_size
        return order[self.rank * per_rank : (self.rank + 1) * per_rank]

    def _batch_rng(self, batch_index):
        return np.random.default_rng([self.seed, self.epoch, batch_index, self.rank])


class ShardedPredictor:
    """`predict(model, dataset)` that splits a data set's faces across processes.

    Each process predicts one contiguous part of the faces, and an all-gather
    gives every process all outputs in the original order. Every process
    then computes the same validation scores, so their early-stopping
    decisions agree.

    Args:
        context: `ProcessContext`.
    """

    def __init__(self, context):
        self.context = context
        self._parts = {}

    def _part(self, dataset):
        key = id(dataset)
        if key not in self._parts:
            bounds = np.linspace(0, len(dataset.table), self.context.world_size + 1).astype(int)
            rows = dataset.table.iloc[bounds[self.context.rank] : bounds[self.context.rank + 1]]
            self._parts[key] = None if rows.empty else FaceDataset(
                rows, dataset.task, image_size=dataset.image_size, batch_size=dataset.batch_size, workers=dataset.workers
            )
        return self._parts[key]

    def __call__(self, model, dataset):
        part = self._part(dataset)
        outputs = None if part is None else model.predict(part, verbose=0)
        gathered = [None] * self.context.world_size
        dist.all_gather_object(gathered, outputs)
        parts = [outputs for outputs in gathered if outputs is not None]
        return {name: np.concatenate([outputs[name] for outputs in parts]) for name in parts[0]}


class SyncProcesses(keras.callbacks.Callback):
    """Make the processes agree at the end of each epoch, before validation.

    Averages the BatchNorm running statistics of the timm backbones across
    processes (`timm.utils.distribute_bn`), since each process updated them
    with its own batches. Also replaces the epoch's training logs (loss,
    metrics) by their mean over all processes, leaving keys that start with
    `val_` alone. Place it first. Without a process group it does nothing.

    Args:
        context: `ProcessContext`.
    """

    def __init__(self, context):
        super().__init__()
        self.context = context

    def on_epoch_end(self, epoch, logs=None):
        if not self.context.is_distributed:
            return
        with torch.no_grad():
            for layer in self.model.layers:
                if isinstance(layer, TimmBackbone):
                    timm.utils.distribute_bn(layer.network.module, self.context.world_size, reduce=True)
        if logs is None:
            return
        names = sorted(name for name in logs if not name.startswith("val_"))
        values = torch.tensor([float(logs[name]) for name in names], dtype=torch.float64)
        if torch.cuda.is_available():
            values = values.cuda()
        dist.all_reduce(values, op=dist.ReduceOp.SUM)
        for name, value in zip(names, (values / self.context.world_size).tolist()):
            logs[name] = value
