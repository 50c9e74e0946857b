"""The docs against the code: every field, flag, parameter and hook is documented, and every link resolves.

The reference is the code itself - dataclass fields, ``inspect.signature``,
the scripts' ``--help``, the keys ``MetricsLog`` writes - so a field or flag
added without its doc line fails here. Each check has a control: the same
check given one made-up name must report it.
"""

import dataclasses
import inspect
import json
import os
import re
import subprocess
import sys
import types

import pytest
from mindspore import amp, nn

from mindspore_accum import (
    DriverCallback,
    GradientAccumulation,
    GradientAccumulationCell,
    MetricsLog,
    SaveConfig,
    UpdateRecord,
)
from mindspore_accum.run.state import Progress, TrainingState
from nets import LOSS, MLP

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DOCS = os.path.join(ROOT, "docs")
PAGES = ["README.md"] + [os.path.join("docs", name) for name in sorted(os.listdir(DOCS)) if name.endswith(".md")]
MADE_UP = "made_up_name"  # the control: a name no page documents


def section(page, heading):
    """The text of ``page`` from the heading that starts with ``heading`` to the next heading of its level."""
    text = open(os.path.join(ROOT, page), encoding="utf-8").read()
    match = re.search(rf"^(#+) {re.escape(heading)}.*$", text, re.M)
    assert match, f"{page} has no heading starting {heading!r}"
    level = len(match.group(1))
    end = re.search(rf"^#{{1,{level}}} ", text[match.end():], re.M)
    return text[match.end(): match.end() + end.start() if end else len(text)]


def undocumented(names, text):
    """The names that do not appear in ``text`` in inline code: `` `name` ``, or a word of a span such as
    `` `train_process(epoch, ...)` `` or `` `network/<name>` ``."""
    spans = set(re.findall(r"`([^`]+)`", text))
    words = {word for span in spans for word in re.findall(r"(?:--)?[A-Za-z_][\w]*", span)}
    return [name for name in names if name not in spans and name not in words]


def check(names, text):
    """Asserts every name is documented and that the made-up one is not (the control)."""
    assert undocumented(names, text) == [], "documented nowhere: add a doc line for each"
    assert undocumented([*names, MADE_UP], text) == [MADE_UP], "the check cannot fail"


def field_names(cls):
    return [field.name for field in dataclasses.fields(cls)]


def parameters(function):
    return [name for name in inspect.signature(function).parameters if name != "self"]


def test_every_update_record_field_is_in_the_driver_page():
    check(field_names(UpdateRecord), section("docs/driver.md", "What `train_process` returns"))


def test_every_train_process_parameter_and_save_config_field_is_in_the_driver_page():
    text = section("docs/driver.md", "Arguments") + section("docs/driver.md", "Saving")
    check(parameters(GradientAccumulation.train_process) + parameters(GradientAccumulation.__init__), text)
    check(field_names(SaveConfig), text)


def test_every_callback_hook_and_its_arguments_are_in_the_driver_page():
    text = section("docs/driver.md", "Callbacks")
    hooks = [name for name, _ in inspect.getmembers(DriverCallback, inspect.isfunction) if not name.startswith("_")]
    check(hooks, text)
    for hook in hooks:  # the signature as written, e.g. `micro_step(epoch, micro_batch, loss, samples)`
        arguments = [p.name if p.default is p.empty else f"{p.name}={p.default!r}"
                     for p in inspect.signature(getattr(DriverCallback, hook)).parameters.values()][1:]
        written = f"{hook}({', '.join(arguments)})"
        assert f"`{written}`" in text, f"docs/driver.md does not show {written}"


def test_every_training_state_field_and_tensor_group_is_in_the_resuming_page():
    text = section("docs/resuming.md", "Stopping and resuming")
    state_fields = [name for name in field_names(TrainingState) if name != "progress"] + field_names(Progress)
    check(state_fields, text)
    network = MLP()
    trainer = GradientAccumulation(network, LOSS, nn.Momentum(network.trainable_params(), 0.1, 0.9),
                                   loss_scaler=amp.DynamicLossScaler(1024, 2, 100))
    check([f"{group}/<name>" for group in trainer.state_parameters()], text)
    cell = GradientAccumulationCell(nn.WithLossCell(network, LOSS), trainer.optimizer, ema_decay=0.9)
    check([f"{group}/<name>" for group in cell.state_parameters()], text)


def test_every_metrics_key_is_in_the_cli_page(tmp_path):
    """The keys are those MetricsLog writes for an update and an epoch, with an evaluation."""
    log = MetricsLog(tmp_path / "m.jsonl", evaluate=lambda epoch: {"test_loss": 0.5, "test_accuracy": 0.9})
    record = UpdateRecord(1, 1, 4, 128, 0.5, 0.01, 1, 128, False, None, 128)
    log.update(record, types.SimpleNamespace(skipped_updates=0, run_id="0123"))
    log.epoch_end(1, [record])
    log.close()
    keys = sorted({key for line in open(tmp_path / "m.jsonl") for key in json.loads(line)})
    check(keys, section("docs/cli.md", "What a run shows and writes"))


@pytest.mark.parametrize("script", ["train.py", "eval.py", "train_model.py", "plot.py"])
def test_every_script_flag_is_in_the_cli_page(script):
    result = subprocess.run([sys.executable, os.path.join(ROOT, "scripts", script), "--help"],
                            capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert result.returncode == 0, result.stderr
    options = result.stdout[result.stdout.index("options:"):]  # not the examples in the description
    flags = sorted(set(re.findall(r"^\s+(?:-\w, )?(--[a-z_]+)", options, re.M)) - {"--help"})
    assert len(flags) >= {"train.py": 20, "eval.py": 10, "train_model.py": 15, "plot.py": 2}[script], flags
    check(flags, section("docs/cli.md", script))


def slug(heading):
    """GitHub's anchor for a heading."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def anchors(page):
    text = open(os.path.join(ROOT, page), encoding="utf-8").read()
    text = re.sub(r"```.*?```", "", text, flags=re.S)  # a '# comment' in a code block is no heading
    return {slug(h) for h in re.findall(r"^#+ (.*)$", text, re.M)}


def broken_links(page):
    text = open(os.path.join(ROOT, page), encoding="utf-8").read()
    broken = []
    for target in re.findall(r"\]\(([^)\s]+)\)", text):
        if re.match(r"[a-z]+://", target):
            continue
        path, _, anchor = target.partition("#")
        resolved = os.path.normpath(os.path.join(os.path.dirname(page), path)) if path else page
        if not os.path.exists(os.path.join(ROOT, resolved)):
            broken.append(target)
        elif anchor and resolved.endswith(".md") and anchor not in anchors(resolved):
            broken.append(target)
    return broken


@pytest.mark.parametrize("page", PAGES)
def test_every_link_resolves(page):
    assert broken_links(page) == []


def test_the_link_check_can_fail(tmp_path, monkeypatch):
    monkeypatch.setattr(sys.modules[__name__], "ROOT", str(tmp_path))
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "a.md").write_text("# A title\n[ok](#a-title) [gone](b.md) [no anchor](a.md#nothing)\n")
    assert broken_links("docs/a.md") == ["b.md", "a.md#nothing"]


def test_the_readme_is_short():
    lines = open(os.path.join(ROOT, "README.md"), encoding="utf-8").read().count("\n")
    assert lines <= 250, f"README.md has {lines} lines; move detail to a page in docs/"


def test_where_the_code_is_names_every_module_and_the_packages_all_them():
    """design.md's map of the tree and model_zoo_adapters.__all__ against the files (control: a made-up one)."""
    import model_zoo_adapters

    text = section("docs/design.md", "Where the code is")
    missing = lambda names: [n for n in names if not re.search(rf"(?<![\w.]){re.escape(n)}\b", text)]  # noqa: E731
    for package in ("model_zoo_adapters", "scripts", "benchmarks"):
        modules = sorted(name for name in os.listdir(os.path.join(ROOT, package))
                         if name.endswith(".py") and name != "__init__.py")
        assert missing(modules) == [], f"docs/design.md's map of {package}/ leaves these out"
    assert missing(["made_up.py"]) == ["made_up.py"]  # the check can fail
    # The library's folders, each with its own line of the map naming exactly its modules.
    package = os.path.join(ROOT, "mindspore_accum")
    assert [name for name in os.listdir(package) if name.endswith(".py")] == ["__init__.py"], "modules outside a folder"
    folders = sorted(name for name in os.listdir(package) if os.path.isfile(os.path.join(package, name, "__init__.py")))
    lines = re.split(r"\n  (?=\w+/)", text[text.index("mindspore_accum/"):text.index("model_zoo_adapters/")])[1:]
    mapped = {line.split("/", 1)[0]: line for line in lines}
    assert sorted(mapped) == folders
    for folder in folders:
        modules = sorted(name for name in os.listdir(os.path.join(package, folder))
                         if name.endswith(".py") and name != "__init__.py")
        named = re.findall(r"(?<![\w.])(\w+\.py)\b", mapped[folder])
        assert sorted(set(named)) == modules, f"docs/design.md's line for mindspore_accum/{folder}/"
    modules = sorted(name[:-3] for name in os.listdir(os.path.join(ROOT, "model_zoo_adapters"))
                     if name.endswith(".py") and name != "__init__.py")
    assert [name for name in modules if name not in model_zoo_adapters.__all__] == []


def test_the_api_page_lists_the_public_api():
    """docs/api.md against mindspore_accum.__all__ and model_zoo_adapters' registry names (control: MADE_UP)."""
    import mindspore_accum
    import model_zoo_adapters

    text = open(os.path.join(ROOT, "docs", "api.md"), encoding="utf-8").read()
    check(list(mindspore_accum.__all__), text)
    assert [name for name in mindspore_accum.__all__ if not hasattr(mindspore_accum, name)] == [], "not importable"
    check(["create_model", "create_dataset", "register_model", "register_dataset"], text)
    assert [name for name in model_zoo_adapters.__all__[:4] if not hasattr(model_zoo_adapters, name)] == []


def bad_input_rows():
    """The bad-input table of cli.md: ``[(input, {(module, test name)})]``."""
    text = section("docs/cli.md", "Bad input")
    rows = []
    for line in text.splitlines():
        cells = [cell.strip() for cell in line.strip().strip("|").split(" | ")]
        if len(cells) != 3 or cells[2] in ("test", "---"):
            continue
        named = set()
        for test in re.findall(r"`([^`]+)`", cells[2]):
            module, _, name = test.rpartition("::")
            named.add((module or "test_bad_input.py", name))
        rows.append((cells[0], named))
    return rows


def functions_in(module):
    source = open(os.path.join(ROOT, "tests", module), encoding="utf-8").read()
    return set(re.findall(r"^def (test_\w+)", source, re.M))


def test_the_bad_input_table_and_its_tests_are_one_to_one():
    """Every row names tests that exist; every test of test_bad_input.py is some row's (control: a made-up one)."""
    rows = bad_input_rows()
    assert len(rows) >= 30 and all(named for _, named in rows), rows
    named = set().union(*(n for _, n in rows))
    missing = sorted(f"{module}::{name}" for module, name in named if name not in functions_in(module))
    assert missing == [], "the table names tests that do not exist"
    listed = {name for module, name in named if module == "test_bad_input.py"}
    unlisted = sorted(functions_in("test_bad_input.py") - listed)
    assert unlisted == [], "tests/test_bad_input.py has tests no row of cli.md's bad-input table names"
    assert "test_made_up" not in functions_in("test_bad_input.py")  # the check can fail


def test_the_changelog_leads_with_the_version_setup_and_the_package_give():
    """The version in one place each reader looks: setup.py, mindspore_accum.__version__, the CHANGELOG's first
    entry (control: a made-up version is not the CHANGELOG's)."""
    import mindspore_accum

    setup = open(os.path.join(ROOT, "setup.py"), encoding="utf-8").read()
    changelog = open(os.path.join(ROOT, "CHANGELOG.md"), encoding="utf-8").read()
    first = re.search(r"^## (\S+)", changelog, re.MULTILINE).group(1)
    assert re.search(r'version="([^"]+)"', setup).group(1) == mindspore_accum.__version__ == first
    assert first != "0.0.0"
