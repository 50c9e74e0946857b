"""The transformer adapters and the text pipeline, against properties computed another way.

* Causality: changing a later token leaves every earlier position's logits
  unchanged (to float32 rounding), and does change its own.
* Padding: appending padding changes no valid position's output, for the LM
  and the classifier.
* The tokenizer round-trips, and the pipeline pads each micro-batch to its own
  longest sequence with labels that are the inputs shifted by one.
"""

import json

import numpy as np
import pytest
from mindspore import Tensor

from model_zoo_adapters import text
from model_zoo_adapters.transformer import CausalLM, SequenceClassifier, create_text_model

TOLERANCE = dict(rtol=1e-5, atol=1e-5)


def ids_of(rows):
    return Tensor(np.array(rows, np.int32))


def test_the_causal_mask_is_causal():
    network = CausalLM(max_len=16)
    network.set_train(False)
    rng = np.random.default_rng(0)
    ids = rng.integers(1, 257, (2, 10))
    changed = ids.copy()
    changed[:, 6] = (changed[:, 6] % 250) + 3
    before, after = network(ids_of(ids)).asnumpy(), network(ids_of(changed)).asnumpy()
    np.testing.assert_allclose(after[:, :6], before[:, :6], **TOLERANCE)
    assert not np.allclose(after[:, 6:], before[:, 6:], **TOLERANCE), "control: the changed token changed nothing"


@pytest.mark.parametrize("model", ["gpt", "bert"])
def test_padding_changes_no_valid_positions_output(model):
    network = CausalLM(max_len=16) if model == "gpt" else SequenceClassifier(3, max_len=16)
    network.set_train(False)
    rng = np.random.default_rng(1)
    ids = rng.integers(1, 257, (2, 7))
    if model == "bert":
        ids[:, 0] = text.CLS_ID
    padded = np.concatenate([ids, np.full((2, 5), text.PAD_ID)], axis=1)
    short, long = network(ids_of(ids)).asnumpy(), network(ids_of(padded)).asnumpy()
    np.testing.assert_allclose(long[:, :7] if model == "gpt" else long, short, **TOLERANCE)
    # Control: the same five positions holding tokens instead of padding do change the output.
    filled = padded.copy()
    filled[:, 7:] = 65
    other = network(ids_of(filled)).asnumpy()
    assert not np.allclose(other if model == "bert" else other[:, 7:], long if model == "bert" else long[:, 7:],
                           **TOLERANCE)


def test_the_registry_builds_each_size_by_name():
    assert create_text_model("gpt_tiny", max_len=8)(ids_of([[1, 2, 3]])).shape == (1, 3, text.VOCAB_SIZE)
    assert create_text_model("bert_tiny", max_len=8, num_classes=5)(ids_of([[257, 2, 3]])).shape == (1, 5)
    with pytest.raises(ValueError, match="model must be one of 'gpt_tiny', 'gpt_small', 'bert_tiny', 'bert_small', "
                                         "got 'gpt_huge'"):
        create_text_model("gpt_huge")


def test_bytes_round_trip_and_the_lm_pipeline_shifts_and_pads_per_micro_batch(tmp_path):
    sample = "Ünïcode and ASCII: 1 + 1 = 2."
    assert text.decode(text.encode(sample)) == sample
    (tmp_path / "train.txt").write_text("a" * 20 + "\n\nbcdefghijk\n\n" + "0123456789012", encoding="utf-8")
    (tmp_path / "valid.txt").write_text("held out text", encoding="utf-8")
    dataset = text.create_lm_dataset(tmp_path, batch_size=2, seq_len=8, shuffle=False)
    batches = [(x.asnumpy(), y.asnumpy()) for x, y in dataset.create_tuple_iterator(num_epochs=1)]
    # Pieces of 9 bytes, shifted by one: "a"*20 -> 9, 9, 4 (8, 8, 3 positions); "bcdefghijk" -> 9, 2; "0..2" -> 9, 5.
    lengths = [[int((y != text.IGNORE_INDEX).sum(1)[i]) for i in range(len(y))] for _, y in batches]
    assert lengths == [[8, 8], [3, 8], [1, 8], [4]]
    assert [x.shape[1] for x, _ in batches] == [8, 8, 8, 4], "each micro-batch padded to its own longest"
    x, y = batches[1]
    np.testing.assert_array_equal(x[1, 1:], y[1, :-1])  # labels are the inputs shifted by one
    assert (x[0, 3:] == text.PAD_ID).all() and (y[0, 3:] == text.IGNORE_INDEX).all()


def test_jsonl_lines_are_read_and_a_bad_line_is_named(tmp_path):
    path = tmp_path / "labelled.jsonl"
    path.write_text("\n".join(json.dumps({"text": f"sample number {i}", "label": i % 3}) for i in range(20)))
    texts, labels, classes = text.read_labelled(str(path), train=True)
    assert (len(texts), classes) == (18, 3) and labels[:4] == [0, 1, 2, 0]  # every 10th line held out
    assert text.read_labelled(str(path), train=False)[0] == ["sample number 9", "sample number 19"]
    path.write_text('{"text": "fine", "label": 1}\n{"text": "no label"}\n')
    with pytest.raises(text.TextFormatError, match=r"labelled.jsonl:2: not a JSON object with \"text\" and "):
        text.read_labelled(str(path), train=True)


def test_the_pydoc_corpus_ships_with_python_and_its_splits_do_not_overlap():
    train, held_out = text.read_corpus("pydoc", True), text.read_corpus("pydoc", False)
    assert len(train) > 1000 and len(held_out) > 100 and not set(train) & set(held_out)
    texts, labels, classes = text.read_labelled("pydoc", True)
    assert (len(texts), classes, sorted(set(labels))) == (110, 4, [0, 1, 2, 3])
    assert not set(texts) & set(text.read_labelled("pydoc", False)[0])


def test_bucketing_groups_similar_lengths_and_keeps_every_token(tmp_path):
    """bucket_batch_by_length: each micro-batch's sequences fall in one length bucket; no token is lost."""
    paragraphs = ["x" * length for length in (3, 40, 5, 33, 7, 60, 4, 38, 9, 61, 6, 35)]
    (tmp_path / "train.txt").write_text("\n\n".join(paragraphs), encoding="utf-8")
    (tmp_path / "valid.txt").write_text("unused", encoding="utf-8")

    def batches(bucket):
        dataset = text.create_lm_dataset(tmp_path, batch_size=2, seq_len=64, bucket=bucket, shuffle=False)
        return [(labels != text.IGNORE_INDEX).sum(1) for _, labels in dataset.create_tuple_iterator(
            num_epochs=1, output_numpy=True)]

    plain, bucketed = batches(False), batches(True)
    assert sorted(np.concatenate(bucketed).tolist()) == sorted(np.concatenate(plain).tolist())
    boundaries = [0, 8, 16, 32, 64, 10 ** 6]
    for lengths in bucketed:  # bucket_batch_by_length buckets by the input length, one more than the valid labels
        buckets = {next(i for i, b in enumerate(boundaries) if length < b) for length in lengths.tolist()}
        assert len(buckets) == 1, f"one micro-batch mixes buckets: {lengths}"
    assert any(len(set(np.digitize(lengths, boundaries))) > 1 for lengths in plain), "control: plain batches mix"
