"""One process of the two-process DDP test in test_distributed.py; torchrun starts it.

Usage: ddp_worker.py DATA_DIR OUT_DIR EPOCHS

Each process seeds its model differently, so identical weights at the end
show that DDP broadcast the main process's weights and then kept the
processes in step. It writes `OUT_DIR/rank<r>.weights.h5` (variables,
BatchNorm statistics and optimizer state), and `OUT_DIR/rank<r>.json` with
the epoch losses and the faces this process saw in each epoch.
"""

import json
import pathlib
import sys

import torch

torch.set_num_threads(1)

import faceage_keras  # noqa: E402,F401  (selects the Keras torch backend)
import keras  # noqa: E402

from faceage_keras import distributed  # noqa: E402
from faceage_keras.callbacks import DatasetEpoch  # noqa: E402
from faceage_keras.models import build_model  # noqa: E402
from faceage_keras.table import read_labels  # noqa: E402


class RecordEpochs(keras.callbacks.Callback):
    def __init__(self, dataset):
        super().__init__()
        self.dataset = dataset
        self.losses = []
        self.faces = []

    def on_epoch_begin(self, epoch, logs=None):
        self.faces.append(self.dataset.table["image_name"].iloc[self.dataset._order].tolist())

    def on_epoch_end(self, epoch, logs=None):
        self.losses.append(float(logs["loss"]))


def main(data_dir, out_dir, epochs):
    context, _ = distributed.start_process_group()
    keras.utils.set_random_seed(100 + context.rank)

    model = build_model("m2", backbone="test_efficientnet", weights="none", image_size=32)
    model.compile(optimizer=keras.optimizers.AdamW(1e-2, global_clipnorm=5.0))
    table, _ = read_labels(data_dir)
    train_data = distributed.ShardedFaceDataset(
        table, "m2", rank=context.rank, world_size=context.world_size, training=True, image_size=32, batch_size=8
    )
    distributed.install_ddp_train_step(model, context)

    recorder = RecordEpochs(train_data)
    callbacks = [distributed.SyncProcesses(context), DatasetEpoch(train_data), recorder]
    model.fit(train_data, epochs=epochs, callbacks=callbacks, shuffle=False, verbose=0)

    out_dir = pathlib.Path(out_dir)
    model.save_weights(out_dir / f"rank{context.rank}.weights.h5")
    record = {"losses": recorder.losses, "faces": recorder.faces, "batches": len(train_data)}
    (out_dir / f"rank{context.rank}.json").write_text(json.dumps(record))
    distributed.end_process_group()


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], int(sys.argv[3]))
