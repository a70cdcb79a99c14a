"""`vitkit experiment`: the cells each experiment runs, the arithmetic behind its table, and the
runner's bookkeeping (finished runs are read, interrupted ones resumed, mean and spread over seeds)."""

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

import vitkit
from vitkit.data import load_data, training_subset
from vitkit.errors import ConfigError
from vitkit.experiments import EXPERIMENTS, Settings, aggregate, get_experiment, run_experiment
from vitkit.experiments import arch, depth, posemb
from vitkit.experiments.runner import (Setup, accuracy_limits, default_seeds, format_score, line_plot, noise_verdict,
                                       pinned_base)
from vitkit.models import ModelConfig, forward_flops, parameters_of
from vitkit.train import loop

TINY = dict(width=16, depth=1, num_heads=2, mlp_dim=32)
SRC = str(Path(vitkit.__file__).resolve().parents[1])


@pytest.fixture(scope="module")
def digits():
    return load_data("digits")


def setup_for(data, **settings):
    s = Settings(**{"model_options": dict(TINY), **settings})
    return Setup(s, data, pinned_base(s, data))


# ------------------------------------------------------------------ aggregation
def test_mean_and_spread_over_seeds_are_the_mean_and_sample_standard_deviation():
    stats = aggregate([0.5, 0.7, 0.9])
    assert stats["n"] == 3
    assert stats["mean"] == pytest.approx(0.7)
    assert stats["spread"] == pytest.approx(0.2)  # sqrt((0.04 + 0 + 0.04) / 2)
    assert format_score(stats) == "70.00 ± 20.00"


def test_one_seed_has_no_spread_and_missing_scores_are_left_out():
    assert aggregate([0.25]) == {"mean": 0.25, "spread": None, "n": 1}
    assert format_score(aggregate([0.25])) == "25.00"
    assert aggregate([None, 0.2, 0.4])["mean"] == pytest.approx(0.3)
    assert aggregate([None]) == {"mean": None, "spread": None, "n": 0}


# ------------------------------------------------------------------ noise
def row(cell, mean, spread):
    return {"cell": cell, "stats": {"test_acc": {"mean": mean, "spread": spread, "n": 3 if spread else 1}}}


def test_cells_at_most_one_test_image_or_the_seeds_spread_below_the_best_are_within_noise():
    rows = [row("a", 0.95, 0.004), row("b", 0.942, 0.001), row("c", 0.90, 0.005), row("d", 0.947, None)]
    # 100 test images: one image is 0.01, more than either spread.
    verdict = noise_verdict(rows, "test_acc", 100)
    assert (verdict["best"], verdict["within_noise"], verdict["apart"]) == ("a", ["b", "d"], ["c"])
    assert verdict["text"] == ("test accuracy: a is highest (95.00 ± 0.40); within noise of it (at most one test "
                               "image or the seeds' spread apart; one test image is 1.00 points): b, d; further "
                               "below: c.")
    # 10,000 test images: one image is 0.0001; b (0.008 below) is now further than a's spread (0.004).
    verdict = noise_verdict(rows, "test_acc", 10_000)
    assert (verdict["within_noise"], verdict["apart"]) == (["d"], ["b", "c"])


def test_when_every_cell_is_within_noise_the_verdict_says_the_experiment_does_not_separate_them():
    verdict = noise_verdict([row("x", 354 / 359, None), row("y", 353 / 359, None)], "test_acc", 359)
    assert verdict["within_noise"] == ["y"] and verdict["text"].endswith(
        "but every cell is within noise of it (at most one test image or the seeds' spread apart; one test image "
        "is 0.28 points): on this data the experiment does not separate them.")
    assert noise_verdict([row("x", None, None)], "test_acc", 359) is None


def test_small_data_gets_several_seeds_by_default():
    assert [default_seeds(n) for n in (40, 1_259, 10_000, 10_001, 50_000)] == [3, 3, 3, 1, 1]


def test_the_accuracy_axis_never_zooms_into_noise(tmp_path):
    # The datasize plot: 92-97.5 % filled the whole height.
    assert accuracy_limits([92.0, 97.5]) == (78.5, 98.5)
    assert accuracy_limits([2.0, 5.0]) == (0.0, 20.0)
    assert accuracy_limits([40.0, 99.5]) == (34.05, 100.0)
    series = {"test accuracy": [(0.25, {"mean": 0.92, "spread": 0.01}), (1.0, {"mean": 0.975, "spread": None})]}
    fig = line_plot(series, tmp_path / "d.png", "t", "fraction", num_test=40)
    ax = fig.axes[0]
    bottom, top = ax.get_ylim()
    assert top - bottom >= 20 and bottom <= 91 and top >= 97.5
    assert len(ax.containers) == 1 and ax.containers[0].has_yerr  # the seeds' spread as error bars
    assert "one test image = 2.50 points" in ax.texts[0].get_text()
    assert (tmp_path / "d.png").read_bytes()[:4] == b"\x89PNG"


# ------------------------------------------------------------------ the cells
def test_posemb_runs_the_eight_cells_of_table_8_plus_sincos2d(digits):
    cells = posemb.cells(setup_for(digits))
    grid = [(c.model_options["posemb"], c.model_options["posemb_where"]) for c in cells]
    assert len(cells) == 9 and len(set(c.name for c in cells)) == 9
    assert grid == [("none", "stem"),
                    ("learned1d", "stem"), ("learned1d", "every_layer"), ("learned1d", "every_layer_shared"),
                    ("learned2d", "stem"), ("learned2d", "every_layer"), ("learned2d", "every_layer_shared"),
                    ("relative", "stem"), ("sincos2d", "stem")]
    references = {kind_where: c.reference for kind_where, c in zip(grid, cells)}
    assert references[("learned1d", "every_layer_shared")] == 0.64292
    assert references[("none", "stem")] == 0.61382
    assert references[("sincos2d", "stem")] is None
    assert sum(r is not None for r in references.values()) == 8


def test_every_cell_of_every_experiment_is_a_valid_model_of_the_normal_trainer(digits):
    setup = setup_for(digits)
    for experiment in EXPERIMENTS.values():
        for cell in experiment.cells(setup):
            ModelConfig.from_dict({**setup.model, **cell.model_options})
            setup.base.replace(**cell.changes).validate()


def test_pooling_sweeps_each_pooling_over_the_same_learning_rates(digits):
    setup = setup_for(digits, lrs=(1e-3, 3e-3))
    cells = get_experiment("pooling").cells(setup)
    assert [(c.model_options["pool"], c.changes["lr"]) for c in cells] == [
        ("token", 1e-3), ("token", 3e-3), ("gap", 1e-3), ("gap", 3e-3)]


def test_depth_cells_match_the_base_models_parameter_count(digits):
    setup = setup_for(digits, depths=(1, 2, 6))
    target = parameters_of(ModelConfig.from_dict(setup.model))
    cells = depth.cells(setup)
    assert [c.model_options["depth"] for c in cells] == [1, 2, 6]
    assert cells[0].model_options["width"] == TINY["width"]  # the base itself
    for cell in cells[1:]:
        width = cell.model_options["width"]
        assert width % TINY["num_heads"] == 0 and width % 4 == 0
        params = parameters_of(ModelConfig.from_dict({**setup.model, **cell.model_options}))
        neighbours = [parameters_of(ModelConfig.from_dict({**setup.model, **cell.model_options, "width": w,
                                                           "mlp_dim": 2 * w}))
                      for w in (width - 4, width + 4) if w > 0]
        assert all(abs(params - target) <= abs(p - target) for p in neighbours)
    assert cells[2].model_options["width"] < TINY["width"]


def test_matched_compute_arithmetic():
    assert arch.training_flops(2e6, 1000, 10) == 6e10  # 3 x forward x images seen
    # 9e9 per epoch against a 6e10 budget: 7 epochs (6.3e10) is closer than 6 (5.4e10).
    assert arch.matched_epochs(6e10, 3e6, 1000) == 7
    assert arch.matched_epochs(6e10, 1e6, 1000) == 20
    assert arch.matched_epochs(6e10, 1e9, 1000) == 1  # never less than one epoch


def test_arch_gives_each_model_the_epochs_that_match_the_vits_budget(digits):
    setup = setup_for(digits, epochs=10, model_options=dict(width=32, depth=2, num_heads=2, mlp_dim=64))
    cells = {c.name: c for c in arch.cells(setup)}
    assert set(cells) == {"vit", "resnet", "hybrid"}
    n = len(digits.train)
    budget = 3 * forward_flops(ModelConfig.from_dict(setup.model)) * n * 10
    assert cells["vit"].changes["epochs"] == 10 and cells["vit"].model_options == {}
    for name in ("resnet", "hybrid"):
        cfg = ModelConfig.from_dict({**setup.model, **cells[name].model_options})
        per_epoch = 3 * forward_flops(cfg) * n
        epochs = cells[name].changes["epochs"]
        assert all(abs(epochs * per_epoch - budget) <= abs(e * per_epoch - budget) for e in (epochs - 1, epochs + 1)
                   if e >= 1)
    assert cells["resnet"].model_options["depth"] == 0 and cells["resnet"].model_options["pool"] == "gap"
    hybrid = ModelConfig.from_dict({**setup.model, **cells["hybrid"].model_options})
    assert hybrid.depth == 2 and hybrid.patch_size == 1 and hybrid.stem_stride == setup.model["patch_size"]


def test_training_subsets_are_stratified_nested_and_deterministic(digits):
    train = digits.train
    tenth, half = training_subset(train, 0.1, 0), training_subset(train, 0.5, 0)
    assert len(tenth) == pytest.approx(0.1 * len(train), abs=10)
    for c in range(10):
        share = int((tenth.labels == c).sum()) / int((train.labels == c).sum())
        assert share == pytest.approx(0.1, abs=0.02)
    as_rows = lambda s: {tuple(x.flatten().tolist()) for x in s.images}  # noqa: E731
    assert as_rows(tenth) <= as_rows(half)
    assert training_subset(train, 0.1, 0).labels.tolist() == tenth.labels.tolist()
    assert training_subset(train, 1.0, 0) is train


def test_datasize_keeps_the_number_of_updates(digits):
    setup = setup_for(digits, epochs=4, fractions=(0.25, 1.0))
    cells = get_experiment("datasize").cells(setup)
    assert [(c.changes["train_fraction"], c.changes["epochs"]) for c in cells] == [(0.25, 16), (1.0, 4)]
    with pytest.raises(ConfigError):
        get_experiment("datasize").cells(setup_for(digits, fractions=(1.5,)))


def test_an_unknown_experiment_is_a_config_error():
    with pytest.raises(ConfigError, match="posemb, pooling, depth, arch, datasize"):
        get_experiment("resnets")


# ------------------------------------------------------------------ the runner, end to end (tiny)
def test_runs_are_trained_once_aggregated_over_seeds_then_read_or_resumed(tmp_path, monkeypatch):
    settings = Settings(out=str(tmp_path / "exp"), epochs=1, seeds=2, fractions=(0.5, 1.0),
                        model_options=dict(TINY), train_options={"batch_size": 128}, quiet=True)
    result = run_experiment(get_experiment("datasize"), settings)

    runs = tmp_path / "exp" / "runs"
    assert sorted(p.name for p in runs.iterdir()) == ["fraction0.5-seed0", "fraction0.5-seed1",
                                                      "fraction1-seed0", "fraction1-seed1"]
    markdown = (tmp_path / "exp" / "results.md").read_text()
    for row in result["cells"]:
        summaries = [json.loads((runs / f"{row['cell']}-seed{s}" / "summary.json").read_text()) for s in (0, 1)]
        accs = [s["test_acc"] for s in summaries]
        assert row["stats"]["test_acc"]["mean"] == pytest.approx(sum(accs) / 2)
        assert row["stats"]["test_acc"]["spread"] == pytest.approx(abs(accs[0] - accs[1]) / math.sqrt(2))
        assert [s["seed"] for s in summaries] == [0, 1]
        assert 0.0 <= row["stats"]["fewshot"]["mean"] <= 1.0
        line = next(l for l in markdown.splitlines() if l.startswith(f"| {row['labels']['fraction']} |"))
        assert format_score(row["stats"]["test_acc"]) in line and format_score(row["stats"]["fewshot"]) in line
    assert result["cells"][0]["epochs"] == 2  # half the data, twice the epochs
    assert (tmp_path / "exp" / "datasize.png").read_bytes()[:4] == b"\x89PNG"
    assert json.loads((tmp_path / "exp" / "results.json").read_text())["cells"] == result["cells"]

    def no_training(*args, **kwargs):
        raise AssertionError("a finished run was trained again")

    monkeypatch.setattr(loop, "train", no_training)
    again = run_experiment(get_experiment("datasize"), settings)
    assert again["cells"] == result["cells"]

    # An interrupted run (config and checkpoint, no summary) is resumed, and only it.
    (runs / "fraction1-seed1" / "summary.json").unlink()
    calls = []
    monkeypatch.setattr(loop, "train", lambda cfg, resume, quiet: calls.append((cfg.out, resume)) or
                        loop.Trainer(cfg, resume=resume, quiet=quiet).run())
    run_experiment(get_experiment("datasize"), settings)
    assert calls == [(str(runs / "fraction1-seed1"), True)]

    # A run stopped before its first epoch ended has nothing to resume: it is trained afresh.
    for path in (runs / "fraction0.5-seed0").rglob("*"):
        if path.is_file() and path.name != "config.yaml":
            path.unlink()
    calls.clear()
    run_experiment(get_experiment("datasize"), settings)
    assert calls == [(str(runs / "fraction0.5-seed0"), False)]
    assert (runs / "fraction0.5-seed0" / "summary.json").is_file()

    with pytest.raises(ConfigError, match="epochs"):
        run_experiment(get_experiment("datasize"), Settings(**{**settings.__dict__, "epochs": 3}))
    with pytest.raises(ConfigError, match="datasize"):
        run_experiment(get_experiment("posemb"), settings)


def test_without_seeds_small_data_runs_three_and_the_results_say_what_is_noise(tmp_path, monkeypatch, capsys):
    # Training replaced by known results: cell depth1 is 2 test images above depth2 on average,
    # within the seeds' spread; what is checked is the runner's arithmetic and what it says.
    accuracy = {("depth1", 0): 300, ("depth1", 1): 306, ("depth1", 2): 303,
                ("depth2", 0): 301, ("depth2", 1): 299, ("depth2", 2): 303}
    n_test = len(load_data("digits").test)

    def known_result(cfg, resume, quiet):
        cell, seed = Path(cfg.out).name.rsplit("-seed", 1)
        return {"test_acc": accuracy[(cell.split("-")[0], int(seed))] / n_test, "val_acc": 0.9, "epochs": cfg.epochs,
                "params": 1000, "train_seconds": 0.1, "checkpoint": str(Path(cfg.out) / "final.safetensors")}

    monkeypatch.setattr(loop, "train", known_result)
    settings = Settings(out=str(tmp_path / "exp"), epochs=1, depths=(1, 2), model_options=dict(TINY))
    result = run_experiment(get_experiment("depth"), settings)
    assert result["seeds"] == 3 and [len(r["runs"]) for r in result["cells"]] == [3, 3]
    err = capsys.readouterr().err
    assert "seeds: 3 per cell (1,259 training images, at most 10,000: small runs vary from seed to seed; " \
           "--seeds N to choose)" in err
    verdict = next(v for v in result["noise"] if v["metric"] == "test_acc")
    spread = math.sqrt(((300 - 303) ** 2 + 3 ** 2) / 2) / n_test  # depth1's sample standard deviation
    assert result["cells"][0]["stats"]["test_acc"]["spread"] == pytest.approx(spread)
    assert (verdict["best"], verdict["within_noise"]) == (result["cells"][0]["cell"], [result["cells"][1]["cell"]])
    assert verdict["text"] in err
    markdown = (tmp_path / "exp" / "results.md").read_text()
    assert f"- resolution: one test image is {100 / n_test:.2f} points of test accuracy" in markdown
    assert "## Which differences are noise\n\n- " + verdict["text"] in markdown


def vitkit_cli(*args):
    env = {**os.environ, "PYTHONPATH": SRC, "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-m", "vitkit", *map(str, args)], capture_output=True, text=True,
                          env=env, timeout=600)


def test_an_unknown_experiment_name_is_one_line_and_exit_2(tmp_path):
    result = vitkit_cli("experiment", "resnets", "--out", tmp_path / "x")
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "unknown experiment 'resnets'" in lines[0] and "Traceback" not in result.stderr
    assert not (tmp_path / "x").exists()


@pytest.mark.slow
def test_posemb_end_to_end_through_the_cli(tmp_path):
    result = vitkit_cli("experiment", "posemb", "--out", tmp_path / "pe", "--epochs", "1", "--seeds", "1", "--width", "16",
                        "--depth", "1", "--num-heads", "2", "--mlp-dim", "32", "--batch-size", "128", "--json")
    assert result.returncode == 0, result.stderr
    out = json.loads(result.stdout)
    assert [row["cell"] for row in out["cells"]][:2] == ["none", "learned1d-stem"] and len(out["cells"]) == 9
    assert all(row["stats"]["fewshot"]["n"] == 1 for row in out["cells"])
    assert result.stderr.count("seed 0: trained") == 9
    markdown = (tmp_path / "pe" / "results.md").read_text()
    assert "| learned1d | every_layer_shared |" in markdown and "| 64.29 |" in markdown
