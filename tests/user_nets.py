"""A user's own network and dataset, registered for the scripts through ``--user_module`` (test_bad_input.py).

The dataset is made from its ``--data_path`` name, not read from a file: no fingerprint can be taken of it, the
case in which a resume must compare the name.
"""

import zlib

import mindspore.dataset as ds
import numpy as np
from mindspore import nn

from model_zoo_adapters.registry import register_dataset, register_model


@register_model("user_mlp", datasets=("user_random",), about="a user's MLP")
def _mlp(num_classes, **_):
    return nn.SequentialCell(nn.Flatten(), nn.Dense(8, 16), nn.ReLU(), nn.Dense(16, num_classes))


@register_dataset("user_random", channels=1, image_size=8, classes=lambda path, train: 4)
def _random(data_path, batch_size, train=True, num_samples=None, shuffle=None, drop_remainder=True,
            num_shards=None, shard_id=None):
    rng = np.random.default_rng(zlib.crc32(data_path.encode()) + train)  # other names, other data
    rows = num_samples or 48
    data = ds.NumpySlicesDataset({"x": rng.standard_normal((rows, 1, 8)).astype(np.float32),
                                  "label": rng.integers(0, 4, rows).astype(np.int32)},
                                 shuffle=bool(train if shuffle is None else shuffle), num_shards=num_shards,
                                 shard_id=shard_id)
    return data.batch(batch_size, drop_remainder=drop_remainder)
