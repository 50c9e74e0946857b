"""Step 3, build: from a resolved :class:`~resolve.Config`, MindSpore set up, the network, loss, optimizer and data.

Every object comes from the registries (model_zoo_adapters.registry) and MindSpore's own classes; nothing here
checks a flag (resolve.py has) or prints (report.py does).
"""

import dataclasses
import logging
from typing import Optional

import mindspore as ms
import mindspore.dataset as ds

from mindspore_accum import learning_rates
from mindspore_accum.core.optimizers import create_optimizer
from mindspore_accum.core.schedule import WindowSchedule
from mindspore_accum.data.windowed_data import WindowedDataset
from mindspore_accum.run.checkpoint import load_initial_weights
from mindspore_accum.run.device import resolve_device_target
from model_zoo_adapters import registry
from model_zoo_adapters.mindcv_models import disable_dropout

__all__ = ["setup_mindspore", "seed_everything", "build_network", "build_loss", "build_optimizer", "build_dataset",
           "learning_rate", "TrainingData", "build_training_data", "MAX_SCHEDULED_UPDATES"]

logger = logging.getLogger("mindspore_accum.scripts")


def setup_mindspore(device_target):
    """GRAPH_MODE on the resolved device; returns the device name."""
    device = resolve_device_target(device_target)
    ms.set_device(device)
    ms.set_context(mode=ms.GRAPH_MODE)
    return device


def seed_everything(seed):
    """The initial weights and the shuffle: every rank seeds alike, so that every rank starts from the same weights."""
    ms.set_seed(seed)
    ds.config.set_seed(seed)


def build_network(config, init_ckpt=None):
    """The network ``config`` names, through the registry; started from ``init_ckpt``'s weights when given."""
    try:
        network = registry.create_model(config.model, config.num_classes, channels=config.channels,
                                        image_size=config.image_size, norm=config.norm, gn_groups=config.gn_groups,
                                        conv_impl=config.conv_impl, seq_len=config.seq_len)
    except ValueError as error:
        if str(error).startswith("gn_groups "):  # the adapter's name for it: the flag's here
            raise ValueError(f"--{error}") from None
        raise
    if config.no_dropout:
        disable_dropout(network)
    if init_ckpt:  # before anything is built from the weights: the EMA starts from these
        load_initial_weights(network, init_ckpt)
    return network


def build_loss(config):
    """The loss of ``config.model``'s task: cross-entropy over classes (with ``--label_smoothing``), or over
    every valid token of an LM."""
    loss = registry.TASKS[config.task].loss
    return loss(label_smoothing=config.label_smoothing) if config.label_smoothing else loss()


def build_optimizer(config, params, lr):
    """The optimizer ``config`` names over ``params``, at ``lr`` (a rate or a list of rates, one per update)."""
    return create_optimizer(config.optimizer, params, lr, config.momentum, config.weight_decay)


def build_dataset(config, train, batch_size=None, **kwargs):
    """The dataset ``config`` names, batched by ``batch_size`` (default ``config.batch_size``), through the registry."""
    return registry.create_dataset(config.dataset, config.data_path, batch_size or config.batch_size, train=train,
                                   num_classes=config.num_classes, image_size=config.image_size,
                                   augment=config.augment if train else (), seq_len=config.seq_len,
                                   bucket=config.bucket, **kwargs)


#: The most updates a schedule's list of rates may cover: a list of Python floats of 16.7M entries peaks near 2 GB
#: while MindSpore's helpers build it.
MAX_SCHEDULED_UPDATES = 2 ** 24


def learning_rate(config, total_updates):
    """``--lr``, or with a schedule or warm-up its rates over ``total_updates`` updates (one per update).

    A warm-up longer than the run is accepted, with a warning: the rate then never reaches ``--lr``.
    """
    if config.lr_schedule == "constant" and not config.warmup_steps:
        return config.lr
    if total_updates > MAX_SCHEDULED_UPDATES:
        flag = f"--lr_schedule {config.lr_schedule}" if config.lr_schedule != "constant" else "--warmup_steps"
        raise ValueError(f"{flag} over {total_updates:,} updates is a list of that many rates, more than the "
                         f"{MAX_SCHEDULED_UPDATES:,} it takes: use fewer --epochs (at most "
                         f"{max(1, MAX_SCHEDULED_UPDATES * config.epochs // total_updates):,})")
    if config.warmup_steps > total_updates:
        logger.warning("--warmup_steps %d is longer than the run's %d updates: the rate ends at %.3g, never reaching "
                       "--lr %g; use --warmup_steps %d or fewer", config.warmup_steps, total_updates,
                       config.lr * total_updates / config.warmup_steps, config.lr, total_updates)
    return learning_rates(config.lr_schedule, config.lr, total_updates, config.warmup_steps)


@dataclasses.dataclass
class TrainingData:
    """What an engine trains on, and the derived numbers the banner and the schedules need."""

    #: A batched Dataset, or a WindowedDataset (a global batch or a schedule).
    dataset: object
    #: This rank's micro-batches in epoch 1.
    micro_batches: int
    #: Updates in epoch 1.
    updates: int
    #: Updates in all --epochs: what the learning-rate schedule counts.
    total_updates: int
    windowed: Optional[WindowedDataset] = None


def build_training_data(config, rank, ranks):
    """The training set.

    Fixed windows read this rank's shard in micro-batches (``--num_samples``, which counts in all, becomes
    MindSpore's count per shard). A global batch or a schedule reads every sample on every rank, one by one, and
    cuts each window at its size (:class:`~mindspore_accum.data.windowed_data.WindowedDataset`).
    """
    if config.batch_schedule is None:
        shards = {"num_shards": ranks, "shard_id": rank} if ranks > 1 else {}
        num_samples = -(-config.num_samples // ranks) if config.num_samples and ranks > 1 else config.num_samples
        dataset = build_dataset(config, train=True, num_samples=num_samples, **shards)
        micro_batches = dataset.get_dataset_size()
        updates = WindowSchedule(config.mini_steps, config.remainder).updates_per_epoch(micro_batches)
        return TrainingData(dataset, micro_batches, updates, updates * config.epochs)
    samples = build_dataset(config, train=True, num_samples=config.num_samples, batch_size=1, drop_remainder=False)
    windowed = WindowedDataset(samples, config.batch_size, schedule=config.batch_schedule, rank=rank, ranks=ranks,
                               remainder=config.remainder,
                               pad_values=registry.dataset_entry(config.dataset).pad_values)
    return TrainingData(windowed, windowed.micro_batches_in(1), windowed.updates_in(1),
                        windowed.total_updates(config.epochs), windowed)
