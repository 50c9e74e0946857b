"""One front end (issue 27): train.py and train_model.py take the same training flags, with the same defaults,
and each flag both engines apply gives the same checkpoint, bit for bit.

The reference for the checkpoints is train.py's, which tests/test_cli.py, test_amp_clip_schedule.py,
test_ema.py and test_equivalence.py check against hand-built NumPy or TrainOneStepCell steps; here the
Model path must reproduce it exactly for each flag, and the control is the same run without the flag, which
must differ (the flag reached the engine). --weighting items, the default of gpt_*, is compared the same way
in tests/test_text_cli.py.
"""

import importlib.util
import os
import re

import mindspore as ms
import numpy as np
import pytest
from cli import SCRIPTS, assert_refused, run_script

from msrun import own_lines, run_msrun

TINY = ("--batch_size", 8, "--mini_steps", 3, "--epochs", 2, "--no_progress", "--log_every", 1)


def script_module(name):
    spec = importlib.util.spec_from_file_location(f"front_{name[:-3]}", os.path.join(SCRIPTS, name))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def training_flags(name):
    """``{flag: default}`` of a training script's parser."""
    from flags import training_parser
    engine = script_module(name).ENGINE
    parser = training_parser(engine.description, engine.ckpt_default, engine.ckpt_help, engine.add_own_flags)
    return {action.option_strings[0]: action.default for action in parser._actions
            if action.option_strings and action.dest != "help"}


def parity_gaps(train, model, engine_flags):
    """The flags one script lacks that the engine table does not explain, and the shared ones whose defaults
    differ (but --ckpt_path: a file for train.py, a directory for train_model.py, as the table says)."""
    gaps = [f"{flag} (only {where})" for where, mine, theirs in (("train.py", train, model),
                                                                ("train_model.py", model, train))
            for flag in sorted(set(mine) - set(theirs)) if engine_flags.get(flag, ("",))[0] != where]
    gaps += [f"{flag}: default {train[flag]!r} vs {model[flag]!r}" for flag in sorted(set(train) & set(model))
             if flag != "--ckpt_path" and train[flag] != model[flag]]
    return gaps


def test_every_training_flag_is_both_scripts_with_the_same_default_or_in_the_engine_table():
    from flags import ENGINE_FLAGS

    train, model = training_flags("train.py"), training_flags("train_model.py")
    assert parity_gaps(train, model, ENGINE_FLAGS) == []
    assert len(set(train) & set(model)) >= 35, sorted(set(train) & set(model))
    for flag, (where, _) in ENGINE_FLAGS.items():
        assert flag in (train if where == "train.py" else model), f"{flag} is not {where}'s"
    # Controls: a flag dropped from one script, a default changed, an engine flag claimed by the wrong script.
    assert parity_gaps(train, {k: v for k, v in model.items() if k != "--remainder"}, ENGINE_FLAGS) == [
        "--remainder (only train.py)"]
    assert parity_gaps(train, {**model, "--seed": 1}, ENGINE_FLAGS) == ["--seed: default None vs 1"]
    assert parity_gaps(train, model, {**ENGINE_FLAGS, "--save_every": ("train_model.py", "")}) == [
        "--save_every (only train.py)"]


def test_the_engine_table_is_printed_in_the_cli_page():
    from flags import ENGINE_FLAGS

    page = open(os.path.join(os.path.dirname(SCRIPTS), "docs", "cli.md"), encoding="utf-8").read()
    rows = dict(re.findall(r"^\| `(--[a-z_]+)` \| (train(?:_model)?\.py) \|", page, re.M))
    assert rows == {flag: where for flag, (where, _) in ENGINE_FLAGS.items()}
    assert "--made_up" not in rows  # control: a flag that is not in the table is not found


def bare(path):
    return {name: value.asnumpy() for name, value in ms.load_checkpoint(str(path)).items()}


@pytest.fixture(scope="module")
def baseline(tmp_path_factory, tiny_mnist):
    out = tmp_path_factory.mktemp("baseline")
    result = run_script("train.py", "--data_path", tiny_mnist, *TINY, cwd=out)
    assert result.returncode == 0, result.stderr
    return bare(out / "gradient_accumulation.ckpt")


@pytest.mark.parametrize("flags", [
    ("--clip_grad_norm", 0.05),
    ("--lr_schedule", "cosine"),
    ("--warmup_steps", 3),
    ("--remainder", "drop"),
    ("--ema_decay", 0.5),
    ("--amp_level", "O2"),
    ("--label_smoothing", 0.1),
], ids=lambda flags: flags[0])
def test_each_flag_gives_the_same_checkpoint_on_both_scripts(tmp_path, tiny_mnist, baseline, flags):
    driver = run_script("train.py", "--data_path", tiny_mnist, *TINY, *flags, cwd=tmp_path)
    assert driver.returncode == 0, driver.stderr
    model = run_script("train_model.py", "--data_path", tiny_mnist, *TINY, *flags, cwd=tmp_path)
    assert model.returncode == 0, model.stderr
    expected, actual = bare(tmp_path / "gradient_accumulation.ckpt"), bare(tmp_path / "ckpt" / "lenet-2_8.ckpt")
    assert sorted(actual) == sorted(expected)
    for name in expected:
        np.testing.assert_array_equal(actual[name], expected[name], err_msg=f"{name} with {flags}: "
                                                                            f"train_model.py vs train.py")
    # Control: the flag changed the weights, so an engine that ignored it would fail above.
    assert any(not np.array_equal(expected[name], baseline[name]) for name in expected), f"{flags} changed nothing"


def test_eval_every_epoch_prints_the_same_lines_on_both_scripts(tmp_path, tiny_mnist):
    pattern = r"^epoch: (\d) test loss: (\S+) test accuracy: (\S+)$"
    lines = {}
    for name in ("train.py", "train_model.py"):
        result = run_script(name, "--data_path", tiny_mnist, *TINY, "--eval_every_epoch", "--ema_decay", 0.5,
                            cwd=tmp_path)
        assert result.returncode == 0, result.stderr
        lines[name] = re.findall(pattern, result.stdout, re.M)
    assert [line[0] for line in lines["train.py"]] == ["1", "2"], lines
    assert lines["train_model.py"] == lines["train.py"]
    # The epoch-2 line scores the checkpoint's weights (the average): eval.py on train.py's file agrees.
    evaluated = run_script("eval.py", "--data_path", tiny_mnist, "--ckpt_path", "gradient_accumulation.ckpt",
                           "--batch_size", 8, cwd=tmp_path)
    assert re.search(r"^test loss: (\S+)$", evaluated.stdout, re.M).group(1) == lines["train.py"][1][1]


def test_keep_checkpoints_and_resume_from_a_directory_on_the_model_path(tmp_path, tiny_mnist):
    flags = ("--data_path", tiny_mnist, *TINY, "--save_steps", 2, "--keep_checkpoints", 2)
    whole = run_script("train_model.py", *flags, cwd=tmp_path)
    assert whole.returncode == 0, whole.stderr
    kept = sorted(p.name for p in (tmp_path / "ckpt" / "train").glob("train-*.ckpt"))
    assert kept == ["train-2_6.ckpt", "train-2_8.ckpt"], kept  # micro-steps 14 and 16, the newest two
    # --resume <ckpt_path> takes the newest train-Cell checkpoint in it: micro-step 16, the end of --epochs 2.
    again = run_script("train_model.py", *flags, "--ckpt_path", "more", "--epochs", 3, "--resume", "ckpt",
                       cwd=tmp_path)
    assert again.returncode == 0, again.stderr
    assert "resuming at micro-step 16 from " in again.stdout and "train-2_8.ckpt" in again.stdout, again.stdout


def test_ckpt_path_spellings(tmp_path, tiny_mnist):
    # train.py: a directory (the zoo's, train_model.py's spelling) receives gradient_accumulation.ckpt.
    result = run_script("train.py", "--data_path", tiny_mnist, *TINY, "--epochs", 1, "--ckpt_path", "out",
                        cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "out" / "gradient_accumulation.ckpt").is_file()
    assert (tmp_path / "out" / "gradient_accumulation_state").is_dir()
    # train_model.py: a file name cannot be ModelCheckpoint's directory: one line saying what to pass.
    refused = run_script("train_model.py", "--data_path", tiny_mnist, *TINY, "--ckpt_path", "model.ckpt",
                         cwd=tmp_path)
    assert_refused(refused, "--ckpt_path 'model.ckpt' names a file", "--ckpt_path model")
    assert not (tmp_path / "model.ckpt").exists()


def test_seed_defaults_to_the_resumed_runs_on_the_model_path(tmp_path, tiny_mnist):
    flags = ("--data_path", tiny_mnist, "--batch_size", 8, "--mini_steps", 3, "--log_every", 1)
    first = run_script("train_model.py", *flags, "--epochs", 1, "--seed", 7, cwd=tmp_path)
    assert first.returncode == 0, first.stderr
    resumed = run_script("train_model.py", *flags, "--epochs", 2, "--ckpt_path", "again", "--resume", "ckpt",
                         cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr
    assert "seed: 7" in resumed.stdout, resumed.stdout
    whole = run_script("train_model.py", *flags, "--epochs", 2, "--seed", 7, "--ckpt_path", "whole", cwd=tmp_path)
    assert whole.returncode == 0, whole.stderr
    expected, actual = bare(tmp_path / "whole" / "lenet-2_8.ckpt"), bare(tmp_path / "again" / "lenet-2_8.ckpt")
    for name in expected:
        np.testing.assert_array_equal(actual[name], expected[name], err_msg=name)
    # Control: another seed is another run.
    other = run_script("train_model.py", *flags, "--epochs", 2, "--seed", 8, "--ckpt_path", "other", cwd=tmp_path)
    assert other.returncode == 0, other.stderr
    assert any(not np.array_equal(v, bare(tmp_path / "other" / "lenet-2_8.ckpt")[k]) for k, v in expected.items())


def test_train_model_distribute_equals_train_py_distribute(tmp_path, tiny_mnist, repo):
    flags = ("--distribute", "--data_path", tiny_mnist, "--batch_size", 4, "--mini_steps", 3, "--epochs", 2,
             "--no_progress", "--log_every", 1)
    for name in ("train.py", "train_model.py"):
        status, logs = run_msrun(os.path.join(repo, "scripts", name), *flags, log_dir=tmp_path / f"logs_{name}",
                                 cwd=tmp_path)
        assert status == 0, "\n".join(own_lines(logs[0])[-20:] + own_lines(logs[1])[-20:])
        assert own_lines(logs[1]) == [], f"{name}: rank 1 printed {own_lines(logs[1])[:5]}"
        assert "effective batch: 24 = 2 x 4 x 3 (ranks x batch_size x mini_steps), lr: 0.01, momentum: 0.9" \
            in own_lines(logs[0])
    expected, actual = bare(tmp_path / "gradient_accumulation.ckpt"), bare(tmp_path / "ckpt" / "lenet-2_8.ckpt")
    for name in expected:
        np.testing.assert_array_equal(actual[name], expected[name], err_msg=f"{name}: train_model vs train.py")
    # Control: one process on one rank's data is another run.
    single = run_script("train_model.py", *flags[1:], "--ckpt_path", "single", cwd=tmp_path)
    assert single.returncode == 0, single.stderr
    assert any(not np.array_equal(v, bare(tmp_path / "single" / "lenet-2_16.ckpt")[k]) for k, v in expected.items())
