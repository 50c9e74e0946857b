"""Two small transformers built from MindSpore's own layers: a causal LM (GPT-style) and a BERT-style classifier.

Both take byte-level token ids (:mod:`~model_zoo_adapters.text`), padded with
``PAD_ID`` = 0 on the right, and mask the padding out of attention, so a
padded position changes no valid position's output. They use
``nn.TransformerEncoderLayer`` (pre-norm, ``batch_first``) and ``nn.Embedding``,
run in graph mode, and have no BatchNorm: gradient accumulation is exact for
them. Dropout defaults to 0, so that a window equals one step on the
concatenated batch.

``create_text_model(name, ...)`` builds one of :data:`TEXT_MODELS` by name.
"""

from typing import Optional

import mindspore as ms
import numpy as np
from mindspore import Tensor, nn, ops
from mindspore.common.initializer import Normal

from mindspore_accum.core.validation import check_choice, check_positive_int

from .text import PAD_ID, VOCAB_SIZE

__all__ = ["CausalLM", "SequenceClassifier", "TokenCrossEntropy", "TEXT_MODELS", "create_text_model"]

#: A large negative score: exp() of it is 0 in float32 and float16, without the NaN that -inf gives a fully masked
#: row. -1e4, as BERT's own code, not -1e9: at O2 MindSpore folds the mask's cast to float16, where -1e9 overflows
#: (a causal and a padding mask together, -2e4, still fit).
_MASKED = -1e4


class _Encoder(nn.Cell):
    """Token and learned position embeddings, ``layers`` pre-norm encoder layers, and a final LayerNorm."""

    def __init__(self, vocab_size, max_len, d_model, layers, heads, d_ff, dropout):
        super().__init__()
        self.token = nn.Embedding(vocab_size, d_model, embedding_table=Normal(0.02))
        self.position = nn.Embedding(max_len, d_model, embedding_table=Normal(0.02))
        self.layers = nn.CellList([nn.TransformerEncoderLayer(d_model, heads, d_ff, dropout, activation="gelu",
                                                              batch_first=True, norm_first=True)
                                   for _ in range(layers)])
        self.norm = nn.LayerNorm((d_model,))
        self.max_len = max_len

    def construct(self, ids, attention_mask=None):
        length = ids.shape[1]
        x = self.token(ids) + self.position(ops.arange(length, dtype=ms.int32))
        padding = ops.cast(ops.equal(ids, PAD_ID), ms.float32) * _MASKED  # no position attends to padding
        for layer in self.layers:
            x = layer(x, attention_mask, padding)
        return self.norm(x)


def causal_mask(length):
    """``(length, length)`` float32: 0 where a position may attend (itself and before), a large negative after."""
    return Tensor(np.triu(np.full((length, length), _MASKED, np.float32), k=1))


class CausalLM(nn.Cell):
    """A decoder-only language model: ``ids`` (batch, length) -> next-token logits (batch, length, vocab).

    Position t attends to positions 0..t only, and never to padding.
    """

    def __init__(self, vocab_size: int = VOCAB_SIZE, max_len: int = 128, d_model: int = 64, layers: int = 2,
                 heads: int = 4, d_ff: int = 256, dropout: float = 0.0):
        super().__init__()
        self.encoder = _Encoder(vocab_size, max_len, d_model, layers, heads, d_ff, dropout)
        self.head = nn.Dense(d_model, vocab_size, weight_init=Normal(0.02))
        self.mask = causal_mask(max_len)

    def construct(self, ids):
        length = ids.shape[1]
        return self.head(self.encoder(ids, self.mask[:length, :length]))


class SequenceClassifier(nn.Cell):
    """A BERT-style encoder for sequence classification: ``ids`` (batch, length) -> logits (batch, classes).

    Bidirectional attention over the non-padding tokens; the first token's
    output (the ``[CLS]`` position, :data:`~model_zoo_adapters.text.CLS_ID`)
    feeds the classifier, as in BERT.
    """

    def __init__(self, num_classes: int, vocab_size: int = VOCAB_SIZE, max_len: int = 128, d_model: int = 64,
                 layers: int = 2, heads: int = 4, d_ff: int = 256, dropout: float = 0.0):
        super().__init__()
        self.encoder = _Encoder(vocab_size, max_len, d_model, layers, heads, d_ff, dropout)
        self.classifier = nn.Dense(d_model, check_positive_int("num_classes", num_classes), weight_init=Normal(0.02))

    def construct(self, ids):
        return self.classifier(self.encoder(ids)[:, 0])


class TokenCrossEntropy(nn.Cell):
    """``nn.CrossEntropyLoss(ignore_index, reduction="mean")`` over every token: logits (..., V), labels (...).

    The mean is over the labels that are not ``ignore_index``: the micro-batch's
    items, as ``weighting="items"`` counts them.
    """

    def __init__(self, ignore_index: int = -100):
        super().__init__()
        self.loss = nn.CrossEntropyLoss(ignore_index=ignore_index, reduction="mean")
        self.ignore_index = ignore_index
        self.reduction = "mean"

    def construct(self, logits, labels):
        return self.loss(ops.reshape(logits, (-1, logits.shape[-1])), ops.reshape(labels, (-1,)))


#: name -> (task, sizes). "lm": a CausalLM; "classify": a SequenceClassifier. The tiny sizes train on 2 CPU cores in
#: minutes; "small" is GPT-2-small's shape less its depth, for a GPU.
TEXT_MODELS = {
    "gpt_tiny": ("lm", dict(d_model=64, layers=2, heads=4, d_ff=256)),
    "gpt_small": ("lm", dict(d_model=256, layers=4, heads=8, d_ff=1024)),
    "bert_tiny": ("classify", dict(d_model=64, layers=2, heads=4, d_ff=256)),
    "bert_small": ("classify", dict(d_model=256, layers=4, heads=8, d_ff=1024)),
}


def create_text_model(name: str, max_len: int = 128, num_classes: Optional[int] = None, dropout: float = 0.0):
    """The network :data:`TEXT_MODELS` names; ``num_classes`` for a classifier."""
    task, sizes = TEXT_MODELS[check_choice("model", name, tuple(TEXT_MODELS))]
    if task == "lm":
        return CausalLM(max_len=max_len, dropout=dropout, **sizes)
    return SequenceClassifier(num_classes, max_len=max_len, dropout=dropout, **sizes)
