"""One configuration mechanism: options generated from the dataclasses, `--set`, the recipe merge order,
the predict settings a run records, and a `--help` whose first panel stays short."""

from __future__ import annotations

import dataclasses
import json
import re
from pathlib import Path
from typing import Any

import click
import pytest
from click.testing import CliRunner

from brats2d.cli.main import cli
from brats2d.cli.options import PANELS, SettingType
from brats2d.config import EXPERIMENT, STAGES, ConfigError, PredictConfig, TrainConfig, to_dict
from brats2d.recipes import RECIPES, merge, parse_assignment

from .conftest import TINY
from .faults.conftest import TINY_CLI, assert_one_line_error

# Which configs each command's options are generated from, and the flags crossval renames (its --seed is
# the folds' seed).
COMMANDS = {"preprocess": ("preprocess",), "train": ("train",), "eval": ("predict",), "predict": ("predict",),
            "crossval": ("preprocess", "train", "predict")}
RENAMED = {("crossval", "preprocess", "seed"): "--split-seed", ("crossval", "train", "seed"): "--train-seed"}


def _params(command: str) -> dict[str, click.Parameter]:
    return {p.name: p for p in cli.commands[command].params if p.name}


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_every_field_has_a_generated_option(command: str) -> None:
    params = _params(command)
    for stage in COMMANDS[command]:
        cls = STAGES[stage]
        for f in dataclasses.fields(cls):
            p = params.get(f"{stage}__{f.name}")
            assert isinstance(p, click.Option), (command, stage, f.name)
            flag = RENAMED.get((command, stage, f.name), "--" + f.name.replace("_", "-"))
            assert p.opts == [flag], (command, f.name, p.opts)
            assert f.metadata["help"] and f.metadata["help"] in (p.help or "")
            if isinstance(f.default, bool):
                assert p.is_bool_flag and p.secondary_opts == ["--no-" + flag[2:]]
            elif isinstance(f.default, tuple):  # comma lists, parsed like --set
                assert isinstance(p.type, SettingType)
                assert p.type.convert(",".join(map(str, f.default)), p, None) == f.default
            elif f.metadata["choices"]:
                assert isinstance(p.type, click.Choice) and tuple(p.type.choices) == f.metadata["choices"]
            else:
                assert isinstance(p.type, SettingType) and p.type.convert(str(f.default), p, None) == f.default
    # Nothing else is generated: a field of another stage would be silently ignored by that command.
    generated = {n.partition("__")[0] for n in params if "__" in n}
    assert generated == set(COMMANDS[command])
    assert "sets" in params  # --set


def test_every_preprocess_setting_reaches_preprocess_and_crossval() -> None:
    for command in ("preprocess", "crossval"):
        flags = {o for p in cli.commands[command].params for o in p.opts}
        for f in dataclasses.fields(STAGES["preprocess"]):
            assert RENAMED.get((command, "preprocess", f.name), "--" + f.name.replace("_", "-")) in flags
    assert {"--percentile", "--dtype"} <= {o for p in cli.commands["crossval"].params for o in p.opts}


def test_merge_order_defaults_then_recipe_then_explicit() -> None:
    seed_default = TrainConfig()
    t = merge("train", "brats2d", {"epochs": 3})
    assert t.epochs == 3  # explicit beats the recipe's 4
    assert (t.loss, t.schedule) == ("bce+dice", "cosine")  # the recipe beats the defaults
    assert t.lr == seed_default.lr and t.batch_size == seed_default.batch_size  # untouched: the defaults
    assert merge("train", "brats2d", {"loss": "bce"}).loss == "bce"  # an explicit value equal to a default still wins
    assert merge("train") == seed_default and merge("train", "seed") == seed_default
    for name, stages in RECIPES.items():
        for stage, values in stages.items():
            cfg = merge(stage, name)
            assert {k: getattr(cfg, k) for k in values} == values, (name, stage)
    # brats2d-fast is brats2d with a U-Net of half the width (a quarter of the FLOPs) predicting with one checkpoint
    for stage in ("preprocess", "train", "predict"):
        fast, full = to_dict(merge(stage, "brats2d-fast")), to_dict(merge(stage, "brats2d"))
        assert {k for k in fast if fast[k] != full[k]} == {"train": {"base_channels", "batch_size"},
                                                           "predict": {"checkpoint"}}.get(stage, set())
    assert (merge("train", "brats2d-fast").base_channels, merge("train", "brats2d-fast").batch_size) == (16, 8)
    mm = merge("preprocess", "brats2d-mm")
    assert (mm.modalities, mm.region, mm.in_channels, mm.out_channels, mm.size) == (("flair", "t1ce", "t2"), "all", 3, 3, 128)
    assert merge("train", "brats2d-mm") == dataclasses.replace(merge("train", "brats2d-fast"), batch_size=4)
    assert merge("predict", "brats2d-mm") == merge("predict", "brats2d-fast")
    record = PredictConfig(tta=True, checkpoint="latest")  # e.g. what a run recorded
    assert merge("predict", None, {"checkpoint": "best"}, base=record) == PredictConfig(tta=True, checkpoint="best")
    with pytest.raises(ConfigError, match="unknown TrainConfig setting"):
        merge("train", None, {"lrr": 1.0})
    with pytest.raises(ConfigError, match="recipe"):
        merge("train", "best")


def test_cli_explicit_option_at_its_default_beats_the_recipe(tiny_cache: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    res = CliRunner().invoke(cli, ["train", "--cache", str(tiny_cache), "--run-dir", str(run), "--recipe", "brats2d",
                                   *TINY_CLI, "--epochs", "1", "--loss", "bce", "--set", "predict.tta=true",
                                   "--set", "dropout=0.1"], catch_exceptions=False)
    assert res.exit_code == 0, res.output
    train = json.loads((run / "config.json").read_text())["train"]
    # --loss bce is the seed default, but given: it beats the recipe's bce+dice; the recipe's schedule stays.
    assert (train["loss"], train["schedule"], train["epochs"], train["dropout"]) == ("bce", "cosine", 1, 0.1)
    recorded = json.loads((run / "predict.json").read_text())
    assert recorded == {**to_dict(PredictConfig()), **RECIPES["brats2d"]["predict"], "tta": True}


def test_set_parses_and_refuses_by_name() -> None:
    assert parse_assignment("dropout=0.1") == ("train", "dropout", 0.1)
    assert parse_assignment("views=axial,Coronal") == ("preprocess", "views", ("axial", "coronal"))
    assert parse_assignment("keep-largest=yes") == ("predict", "keep_largest", True)
    assert parse_assignment("preprocess.seed=7") == ("preprocess", "seed", 7)
    with pytest.raises(ConfigError, match=r"unknown setting 'lrr' \(valid: .*\blr\b"):
        parse_assignment("lrr=0.1")
    with pytest.raises(ConfigError, match="lr: expected a number, got 'abc'"):
        parse_assignment("lr=abc")
    with pytest.raises(ConfigError, match="epochs: expected an integer"):
        parse_assignment("epochs=1.5")
    with pytest.raises(ConfigError, match="split: expected 3 comma-separated numbers"):
        parse_assignment("split=0.5,0.5")
    with pytest.raises(ConfigError, match="'seed' is a setting of preprocess and train"):
        parse_assignment("seed=1")
    with pytest.raises(ConfigError, match="FIELD=VALUE"):
        parse_assignment("dropout")


@pytest.mark.parametrize("value,words", [
    ("lrr=0.1", ["--set", "unknown setting 'lrr'", "batch_size", "min_size"]),  # lists train and predict names
    ("lr=abc", ["--set", "lr: expected a number, got 'abc'"]),
    ("lr=-1", ["lr: must be > 0"]),  # parsed, then refused by TrainConfig
    ("checkpoint=worst", ["checkpoint: 'worst'"]),
    ("percentile=1,2", ["unknown setting 'percentile'"]),  # a preprocess setting: not train's
])
def test_set_on_the_command_line(tiny_cache: Path, tmp_path: Path, value: str, words: list[str]) -> None:
    run = tmp_path / "run"
    r = CliRunner().invoke(cli, ["train", "--cache", str(tiny_cache), "--run-dir", str(run), *TINY_CLI,
                                 "--set", value], catch_exceptions=False)
    assert_one_line_error(r.output, r.exit_code, *words)
    assert not (run / "latest_checkpoint.pth").exists()


def test_set_good_value_reaches_the_config(raw_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "c.h5"
    r = CliRunner().invoke(cli, ["preprocess", str(raw_dir), "--out", str(out), "--size", "24", "--workers", "1",
                                 "--set", "dtype=float32", "--set", "percentile=1,99", "--norm", "percentile"],
                           catch_exceptions=False)
    assert r.exit_code == 0, r.output
    cfg = json.loads(out.with_name("c.config.json").read_text())  # the cache's PreprocessConfig
    assert (cfg["dtype"], cfg["percentile"], cfg["norm"], cfg["size"]) == ("float32", [1.0, 99.0], "percentile", 24)


def _which_checkpoint(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, dict[str, Any]]]:
    """Record (checkpoint, predict keywords) of every `brats2d predict` call, running the real code."""
    import brats2d.inference
    import brats2d.predict

    calls: list[tuple[str, dict[str, Any]]] = []
    load, run = brats2d.inference.load_predictor, brats2d.predict.predict

    def spy_load(run_dir: Any, which: str = "best", device: str = "auto") -> Any:
        calls.append((which, {}))
        return load(run_dir, which, device)

    def spy_run(pred: Any, inputs: Any, out: Any, **kw: Any) -> Any:
        calls[-1][1].update(kw)
        return run(pred, inputs, out, **kw)

    monkeypatch.setattr(brats2d.inference, "load_predictor", spy_load)
    monkeypatch.setattr(brats2d.predict, "predict", spy_run)
    return calls


def test_a_run_predicts_with_the_settings_of_its_recipe(tiny_cache: Path, raw_dir: Path, tmp_path: Path,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    r, run = CliRunner(), tmp_path / "run"
    res = r.invoke(cli, ["train", "--cache", str(tiny_cache), "--run-dir", str(run), "--recipe", "brats2d",
                         *TINY_CLI, "--epochs", "1"], catch_exceptions=False)
    assert res.exit_code == 0, res.output
    assert json.loads((run / "predict.json").read_text())["checkpoint"] == "best+latest"
    test_case = json.loads(tiny_cache.with_name("tiny.splits.json").read_text())["test"][0]
    calls = _which_checkpoint(monkeypatch)

    def predict(*extra: str) -> str:
        res = r.invoke(cli, ["predict", str(raw_dir / test_case), "--run-dir", str(run), "--out",
                             str(tmp_path / f"pred{len(calls)}"), "--device", "cpu", *extra], catch_exceptions=False)
        assert res.exit_code == 0, res.output
        return " ".join(res.output.split())

    out = predict()  # no --recipe: the run's record
    assert calls[-1][0] == "best+latest" and calls[-1][1]["keep_largest"] is True and calls[-1][1]["tta"] is False
    assert f"recorded in {run / 'predict.json'}" in out and "checkpoint=best+latest" in out
    out = predict("--checkpoint", "best")  # an explicit option beats the record; the rest of it stays
    assert calls[-1][0] == "best" and calls[-1][1]["keep_largest"] is True
    assert "given: checkpoint" in out
    predict("--recipe", "seed")  # a recipe replaces the record
    assert calls[-1][0] == "best" and calls[-1][1]["keep_largest"] is False
    # eval reads the same record, and says what it used in metrics_test.json.
    res = r.invoke(cli, ["eval", "--run-dir", str(run), "--device", "cpu"], catch_exceptions=False)
    assert res.exit_code == 0, res.output
    saved = json.loads((run / "metrics_test.json").read_text())
    assert saved["checkpoint"] == "best+latest" and saved["keep_largest"] is True
    # A run from before runs recorded their predict settings: the seed's, and the line says so.
    (run / "predict.json").unlink()
    out = predict()
    assert calls[-1][0] == "best" and calls[-1][1]["keep_largest"] is False
    assert "seed defaults" in out and "has no predict.json" in out


def test_library_train_keeps_a_record_and_writes_the_seed_one_only_where_none(tiny_cache: Path, tmp_path: Path) -> None:
    from brats2d.rundir import RunError, read_predict_record
    from brats2d.train import train

    cfg, run = TrainConfig(**{**TINY, "epochs": 1}), tmp_path / "run"
    train(tiny_cache, run, cfg, log=lambda m: None)
    assert read_predict_record(run) == PredictConfig()
    own = PredictConfig(min_size=5, checkpoint="latest")
    train(tiny_cache, run, cfg, predict=own, log=lambda m: None)  # finished: only the record changes
    assert read_predict_record(run) == own
    train(tiny_cache, run, cfg, log=lambda m: None)
    assert read_predict_record(run) == own
    (run / "predict.json").write_text('{"min_size": -1}')
    with pytest.raises(RunError, match=r"predict.json: not a readable .*min_size: must be an integer >= 0"):
        read_predict_record(run)


def _panels(help_text: str) -> dict[str, list[str]]:
    """{panel title: the option flags listed in it} from rich-click's rendered --help."""
    out: dict[str, list[str]] = {}
    title = None
    for line in help_text.splitlines():
        m = re.match(r"╭─ (.+?) ─", line)
        if m:
            title = m.group(1)
            out[title] = []
            continue
        m = re.match(r"│\s+(?:\*\s+)?(--[a-z][a-z0-9-]*)", line)
        if m and title is not None:
            out[title].append(m.group(1))
    return out


def test_train_help_shows_a_short_main_panel_first_and_the_ablation_knobs_apart() -> None:
    res = CliRunner().invoke(cli, ["train", "--help"], terminal_width=100, catch_exceptions=False)
    assert res.exit_code == 0, res.output
    panels = _panels(res.output)
    titles = list(panels)
    assert titles[0] == "Options" and PANELS[EXPERIMENT] in titles, titles
    main = panels["Options"]
    assert 8 <= len(main) <= 15, main
    assert {"--cache", "--run-dir", "--recipe", "--epochs", "--lr", "--device", "--restart", "--set"} <= set(main)
    experiment = set(panels[PANELS[EXPERIMENT]])
    assert {"--focal-gamma", "--focal-alpha", "--dice-batch", "--norm-layer", "--weight-decay", "--dropout",
            "--intensity-p", "--spatial-p", "--augment", "--depth"} <= experiment
    # Every option (and --help, which click adds) is listed exactly once.
    listed = [o for flags in panels.values() for o in flags]
    assert len(listed) == len(set(listed)) == len([p for p in cli.commands["train"].params if p.opts]) + 1
    # The rendering follows the field metadata.
    exp_fields = {f.name for f in dataclasses.fields(TrainConfig) if f.metadata["group"] == EXPERIMENT}
    assert {"--" + n.replace("_", "-") for n in exp_fields} == experiment
