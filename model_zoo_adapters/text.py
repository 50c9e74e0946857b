"""Text with no download: a byte-level tokenizer, plain-text and JSONL readers, and padded micro-batches.

**Tokens** are bytes: UTF-8 byte ``b`` is id ``b + 1``, so no vocabulary file
is needed and nothing is out of vocabulary. ``PAD_ID`` = 0 pads, ``CLS_ID`` =
257 starts a sequence to classify; :data:`VOCAB_SIZE` is 258. A model's loss
in nats per token is then its loss per byte: bits per byte = loss / ln 2.

**Data** (``data_path``):

- ``"pydoc"``: the English documentation every CPython carries in
  ``pydoc_data.topics`` (79 named topics, about 465,000 characters), so the
  default exists on every machine. For the language model, the paragraphs of
  every 8th topic in sorted order are held out (10 topics) and the rest are
  the training text; the topics repeat each other ("compound" holds "if"),
  so each paragraph is kept once, and none of the training text is held out.
  For classification, the paragraphs of four topics with distinct subjects
  (:data:`PYDOC_CLASSES`) are labelled by topic; the first 110 of them, in
  an interleaved order, are the training set (the mission's small labelled
  set) and the next 200 the held-out set.
- a ``.txt`` file (language model) or a ``.jsonl`` file of
  ``{"text": ..., "label": ...}`` lines (classification): every 10th
  paragraph or line is held out.
- a directory holding ``train.txt`` and ``valid.txt`` (or ``train.jsonl`` and
  ``valid.jsonl``).

Paragraphs are split on blank lines and cut into sequences of at most
``seq_len`` tokens, so sequences differ in length. A micro-batch is padded to
its own longest sequence (``padded_batch``), or, with ``bucket``, sequences of
similar length are batched together (``bucket_batch_by_length``); either way
micro-batches differ in their numbers of valid tokens, which is what
``weighting="items"`` weights them by.
"""

import json
import os
import re

import mindspore.dataset as ds
import numpy as np

from mindspore_accum.core.validation import check_positive_int

__all__ = ["PAD_ID", "CLS_ID", "VOCAB_SIZE", "IGNORE_INDEX", "PYDOC_CLASSES", "encode", "decode", "read_corpus",
           "read_labelled", "create_lm_dataset", "create_classification_dataset", "TextFormatError"]

PAD_ID, CLS_ID, VOCAB_SIZE = 0, 257, 258
#: The largest label a JSONL line may give: the labels are int32.
MAX_LABEL = 2 ** 31 - 2
#: The label of a padded position: nn.CrossEntropyLoss's default ignore_index.
IGNORE_INDEX = -100
#: The pydoc topics labelled for classification, in label order.
PYDOC_CLASSES = ("compound", "debugger", "specialnames", "string-methods")
_PYDOC_TRAIN, _PYDOC_VALID = 110, 200
_MIN_BYTES = 8  # shorter paragraphs (headings, "Changed in version ...") are dropped


class TextFormatError(ValueError):
    """A text or JSONL file that cannot be read, named with its line."""


def encode(text):
    """UTF-8 bytes as int32 token ids (byte + 1)."""
    return np.frombuffer(text.encode("utf-8"), np.uint8).astype(np.int32) + 1


def decode(ids):
    """The inverse of :func:`encode`; PAD and CLS are dropped."""
    ids = np.asarray(ids)
    return bytes((ids[(ids > PAD_ID) & (ids < CLS_ID)] - 1).astype(np.uint8)).decode("utf-8", errors="replace")


def _paragraphs(text):
    return [p.strip() for p in re.split(r"\n\s*\n", text) if len(p.strip().encode("utf-8")) >= _MIN_BYTES]


def _unique(paragraphs):
    return list(dict.fromkeys(paragraphs))


def _pydoc_topics():
    from pydoc_data.topics import topics
    return {name: topics[name] for name in sorted(topics)}


def read_corpus(data_path, train):
    """The language model's paragraphs of the training (or held-out) split of ``data_path``."""
    if data_path == "pydoc":
        topics = list(_pydoc_topics().values())
        # Topics repeat each other ("compound" holds "if", "while", ...): a paragraph is kept once, and a held-out
        # paragraph that the training topics also hold is no held-out paragraph.
        kept = _unique(p for index, text in enumerate(topics) if index % 8 != 7 for p in _paragraphs(text))
        if train:
            return kept
        seen = set(kept)
        return [p for p in _unique(p for index, text in enumerate(topics) if index % 8 == 7
                                   for p in _paragraphs(text)) if p not in seen]
    path, split = _resolve(data_path, train, ".txt")
    if path.endswith(".jsonl"):
        raise TextFormatError(f"--data_path {path!r} holds labelled JSON lines, which are for bert_* "
                              f"(--dataset text_classification); a language model reads plain text: give a .txt "
                              f"file")
    paragraphs = _paragraphs(_read(path))
    if not paragraphs:
        raise TextFormatError(f"{path}: no paragraph of {_MIN_BYTES} bytes or more: give a UTF-8 text file")
    return _held_out_checked(_split(paragraphs, split), split, path, len(paragraphs), "paragraphs")


def read_labelled(data_path, train):
    """``(texts, labels, classes)`` of the training (or held-out) split: labels are ints in ``range(classes)``."""
    if data_path == "pydoc":
        topics = _pydoc_topics()
        per_class = [_unique(_paragraphs(topics[name])) for name in PYDOC_CLASSES]
        interleaved = [(text, label) for row in zip(*per_class) for label, text in enumerate(row)]
        chosen = interleaved[:_PYDOC_TRAIN] if train else interleaved[_PYDOC_TRAIN:_PYDOC_TRAIN + _PYDOC_VALID]
        return [t for t, _ in chosen], [label for _, label in chosen], len(PYDOC_CLASSES)
    path, split = _resolve(data_path, train, ".jsonl")
    rows = []
    for number, line in enumerate(_read(path).splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
            text, label = row["text"], row["label"]
        except (ValueError, TypeError, KeyError):
            raise TextFormatError(f"{path}:{number}: not a JSON object with \"text\" and \"label\": give one "
                                  f'{{"text": ..., "label": ...}} per line') from None
        if not isinstance(text, str) or isinstance(label, bool) or not isinstance(label, int) or label < 0:
            raise TextFormatError(f"{path}:{number}: \"text\" must be a string and \"label\" a whole number >= 0, "
                                  f"got {text!r:.40} and {label!r}")
        if label > MAX_LABEL:
            raise TextFormatError(f"{path}:{number}: label {label} is beyond {MAX_LABEL}, the most a classifier's "
                                  f"int32 labels hold: number the classes from 0")
        rows.append((text, label))
    if not rows:
        raise TextFormatError(f"{path}: no labelled line")
    classes = max(label for _, label in rows) + 1
    total = len(rows)
    rows = _held_out_checked(_split(rows, split), split, path, total, "labelled lines")
    return [t for t, _ in rows], [label for _, label in rows], classes


def _resolve(data_path, train, suffix):
    """The file to read and how to split it: ``None`` (a train/valid file of a directory) or the split wanted."""
    if os.path.isdir(data_path):
        path = os.path.join(data_path, ("train" if train else "valid") + suffix)
        if not os.path.isfile(path):
            raise TextFormatError(f"--data_path {data_path!r} has no {os.path.basename(path)}: give a directory "
                                  f"with train{suffix} and valid{suffix}, a {suffix} file, or pydoc")
        return path, None
    if not os.path.isfile(data_path):
        raise TextFormatError(f"--data_path {data_path!r} does not exist: give a {suffix} file, a directory with "
                              f"train{suffix} and valid{suffix}, or pydoc (Python's own documentation)")
    return data_path, "train" if train else "valid"


def _held_out_checked(rows, split, path, total, what):
    """``rows``, refusing an empty held-out split of one file (fewer than 10 rows) by name."""
    if not rows and split == "valid":
        raise TextFormatError(f"{path}: its {total} {what} leave the held-out split empty (every 10th is held out): "
                              f"give at least 10, or a directory with the train and valid files")
    return rows


def _split(rows, split):
    """Every 10th row is held out when one file holds both splits."""
    if split is None:
        return rows
    return [row for index, row in enumerate(rows) if (index % 10 == 9) == (split == "valid")]


def _read(path):
    try:
        with open(path, encoding="utf-8-sig") as handle:  # a byte-order mark is no text
            return handle.read()
    except UnicodeDecodeError as error:
        raise TextFormatError(f"{path}: not UTF-8 text ({error.reason} at byte {error.start})") from None


def _lm_rows(paragraphs, seq_len):
    """(input ids, labels) per sequence: each paragraph cut into pieces of seq_len + 1 tokens, shifted by one."""
    for paragraph in paragraphs:
        ids = encode(paragraph)
        for start in range(0, len(ids) - 1, seq_len):
            piece = ids[start:start + seq_len + 1]
            if len(piece) >= 2:
                yield piece[:-1], piece[1:]


def _batched(dataset, columns, batch_size, drop_remainder, bucket, seq_len):
    """Pads each micro-batch to its own longest sequence; ``bucket`` groups similar lengths first."""
    pad_info = {name: ([None], value) for name, value in columns.items()}
    if not bucket:
        return dataset.padded_batch(batch_size, drop_remainder=drop_remainder, pad_info=pad_info)
    boundaries = [b for b in (8, 16, 32, 64, 128, 256, 512) if b <= seq_len]
    return dataset.bucket_batch_by_length([next(iter(columns))], boundaries, [batch_size] * (len(boundaries) + 1),
                                          pad_info=pad_info, drop_remainder=drop_remainder)


def create_lm_dataset(data_path="pydoc", batch_size=8, train=True, seq_len=64, bucket=False, num_samples=None,
                      shuffle=None, drop_remainder=False, num_shards=None, shard_id=None):
    """Micro-batches of ``(input_ids, labels)`` for next-byte prediction, int32, padded per micro-batch.

    ``labels`` are the inputs shifted by one, ``IGNORE_INDEX`` where padded.
    """
    batch_size, seq_len = check_positive_int("batch_size", batch_size), check_positive_int("seq_len", seq_len)
    rows = list(_lm_rows(read_corpus(data_path, train), seq_len))[:num_samples]
    data = ds.GeneratorDataset(_Rows(rows), ["input_ids", "labels"], shuffle=train if shuffle is None else shuffle,
                               num_shards=num_shards, shard_id=shard_id)
    return _checked(_batched(data, {"input_ids": PAD_ID, "labels": IGNORE_INDEX}, batch_size, drop_remainder, bucket,
                             seq_len), batch_size, len(rows), data_path, train, num_shards)


def create_classification_dataset(data_path="pydoc", batch_size=8, train=True, seq_len=128, num_samples=None,
                                  shuffle=None, drop_remainder=False, num_shards=None, shard_id=None,
                                  num_classes=None):
    """Micro-batches of ``(input_ids, label)``: ``[CLS]`` and the text's first ``seq_len - 1`` bytes, padded."""
    batch_size, seq_len = check_positive_int("batch_size", batch_size), check_positive_int("seq_len", seq_len)
    texts, labels, classes = read_labelled(data_path, train)
    if num_classes is not None and classes > num_classes:
        raise TextFormatError(f"{data_path}: label {classes - 1} is outside 0..{num_classes - 1} for "
                              f"--num_classes {num_classes}")
    rows = [(np.concatenate([[CLS_ID], encode(text)[:seq_len - 1]]).astype(np.int32), np.int32(label))
            for text, label in zip(texts, labels)][:num_samples]
    data = ds.GeneratorDataset(_Rows(rows), ["input_ids", "label"], shuffle=train if shuffle is None else shuffle,
                               num_shards=num_shards, shard_id=shard_id)
    batched = data.padded_batch(batch_size, drop_remainder=drop_remainder, pad_info={"input_ids": ([None], PAD_ID)})
    return _checked(batched, batch_size, len(rows), data_path, train, num_shards)


def _checked(dataset, batch_size, rows, data_path, train, num_shards):
    """Refuses a split with no sequence, and a training micro-batch larger than the data (a rank's shard's)."""
    if rows == 0:
        raise TextFormatError(f"{data_path}: no sequence to " + ("train on" if train else "evaluate on"))
    share = -(-rows // num_shards) if num_shards else rows
    if dataset.get_dataset_size() == 0 or (train and batch_size > share):
        shard = f" (a rank's shard of {num_shards})" if num_shards else ""
        raise ValueError(f"batch_size={batch_size} is larger than the {share} sequences of {data_path}{shard}: use "
                         f"a batch_size of at most {share}")
    return dataset


class _Rows:
    """Random access over ``rows`` for GeneratorDataset (shuffling and sharding need it)."""

    def __init__(self, rows):
        self.rows = rows

    def __getitem__(self, index):
        return self.rows[index]

    def __len__(self):
        return len(self.rows)
