"""Search spaces: parsing, validation before Ray starts, and the trial configs they make."""

import subprocess
import sys

import pytest
import yaml
from conftest import ROOT

from rnnlib.errors import ConfigError
from rnnlib.search import load_search

CONFIG = ROOT / "jobs/configs/forecast-tune.yaml"


def problems(*overrides, path=CONFIG) -> list[str]:
    with pytest.raises(ConfigError) as e:
        load_search(path, list(overrides))
    return e.value.problems


def test_shipped_space_parses_and_samples_valid_jobs():
    s = load_search(CONFIG)
    assert {d.key for d in s.dims} >= {"model.cell", "data.window", "model.hidden", "model.layers", "train.lr"}
    assert s.num_trials == s.settings.num_samples and s.max_t == s.base_job.train.epochs
    cfg = s.trial_job({"model.cell": "gru", "data.window": 20, "train.lr": 0.01})
    assert (cfg.model.cell, cfg.data.window, cfg.train.lr) == ("gru", 20, 0.01)
    assert load_search(ROOT / "jobs/configs/text-tune.yaml").base_job.task == "text"


def test_grid_multiplies_samples_and_nested_override_replaces_flat_key():
    s = load_search(CONFIG, ["tune.num_samples=2", "search.data.window={grid: [10, 20]}",
                             "search.model.cell={grid: [rnn, lstm, gru]}"])
    assert s.grid_size == 6 and s.num_trials == 12
    assert [d for d in s.dims if d.key == "data.window"][0].args == (10, 20)  # one dim, not two


@pytest.mark.parametrize("override, expect", [
    ("search.model.cells={choice: [lstm]}", "search.model.cells: unknown key"),
    ("search.model={choice: [1]}", "is a section"),
    ("search.model.cell={choice: []}", "search.model.cell: choice needs a non-empty list"),
    ("search.train.lr={uniform: [0.1, 0.01]}", "search.train.lr: low 0.1 must be below high 0.01"),
    ("search.train.lr={loguniform: [0, 0.1]}", "search.train.lr: loguniform needs low > 0"),
    ("search.model.hidden={uniform: [8, 64]}", "model.hidden is an integer; use randint or choice"),
    ("search.model.cell={choice: [lstm, tcn]}", "search.model.cell = 'tcn': model.cell: 'tcn' is not allowed"),
    ("search.model.dropout={uniform: [0.0, 1.5]}", "model.dropout: 1.5 is out of range"),
    ("search.storage={choice: [a, b]}", "search.storage: not searchable"),
    ("search.train.lr={normal: [0, 1]}", "search.train.lr: expected one of {choice: ..."),
    ("tune.num_sample=3", "tune.num_sample: unknown key"),
    ("tune.grace_period=20", "tune.grace_period: 20 is more than the 8 epochs"),
])
def test_bad_space_names_the_key(override, expect):
    assert any(expect in p for p in problems(override)), problems(override)


def test_a_search_made_mostly_of_grid_points_warns():
    grid = ["search.data.window={grid: [10, 20, 30, 60]}", "search.model.cell={grid: [rnn, lstm, gru]}",
            "search.model.layers={grid: [1, 2, 3]}", "search.model.hidden={grid: [16, 32, 64]}"]
    (w,) = load_search(CONFIG, ["tune.num_samples=2", *grid]).warnings()
    assert "multiplies tune.num_samples=2 into 216 trials (108 grid points" in w
    assert "the grid over model.cell, data.window, model.hidden, model.layers multiplies" in w
    assert not load_search(CONFIG, ["tune.num_samples=2", *grid[:2]]).warnings()  # 24 trials: no warning
    assert not load_search(CONFIG, ["tune.num_samples=200", *grid[:2]]).warnings()  # samples, not the grid
    assert not load_search(CONFIG, ["tune.num_samples=300"]).warnings()


@pytest.mark.parametrize("settings, cluster, expect", [
    (["tune.searcher=optuna"], {"CPU": 8.0}, 8),  # 1 CPU per trial
    (["tune.searcher=optuna", "tune.cpus_per_trial=3"], {"CPU": 8.0}, 2),
    (["tune.searcher=optuna", "tune.gpus_per_trial=0.25"], {"CPU": 16.0, "GPU": 1.0}, 4),  # the GPU bounds it
    (["tune.searcher=optuna"], {"CPU": 0.0}, 1),  # a cluster scaled to zero: one at a time until set
    (["tune.searcher=optuna", "tune.trial=trainer", "scaling.workers=2", "scaling.cpus_per_worker=2"],
     {"CPU": 9.0}, 2),  # 2 x (0.1 + 2 x 2)
    (["tune.searcher=optuna", "tune.max_concurrent_trials=3"], {"CPU": 8.0}, 3),  # as set
    (["tune.searcher=random"], {"CPU": 8.0}, 0),  # random search: as many as fit (Tune's default)
])
def test_optuna_runs_as_many_trials_at_once_as_the_cluster_holds(monkeypatch, settings, cluster, expect):
    import ray

    from jobs.tune import _max_concurrent

    monkeypatch.setattr(ray, "cluster_resources", lambda: cluster)
    assert _max_concurrent(load_search(CONFIG, settings)) == expect


def test_optuna_refuses_grid(tmp_path):
    assert any("grid is not supported with tune.searcher=optuna" in p
               for p in problems("tune.searcher=optuna", "search.data.window={grid: [10, 20]}"))


def test_missing_search_section(tmp_path):
    cfg = yaml.safe_load(CONFIG.read_text())
    del cfg["search"]
    p = tmp_path / "no-search.yaml"
    p.write_text(yaml.safe_dump(cfg))
    assert any(m.startswith("search: expected a mapping") for m in problems(path=p))


def test_cli_bad_space_exits_2_before_ray(tmp_path):
    r = subprocess.run([sys.executable, "-m", "jobs.cli", "tune", str(CONFIG), "search.train.lr={loguniform: [-1, 1]}",
                        f"storage={tmp_path}"], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and "search.train.lr: loguniform needs low > 0" in r.stderr
    assert "Traceback" not in r.stderr and not any(tmp_path.iterdir())  # nothing started or written


def test_search_plot_labels_every_searched_value_and_draws_lines_only_where_they_mean_something():
    import matplotlib.pyplot as plt
    import pandas as pd

    from rnnlib.plots import search_figure

    # window 10's trials all failed; 60's ran for both cells; trials of a cell differ in lr too
    df = pd.DataFrame({"data.window": [10, 10, 60, 60, 60, 60], "model.cell": ["lstm", "gru"] * 3,
                       "train.lr": [1e-3, 1e-2] * 3, "status": ["error", "error", "done", "done", "done", "done"],
                       "stopped": ["error", "error", "max_t", "asha", "max_t", "max_t"],
                       "best_val_loss": [float("nan")] * 2 + [0.5, 0.7, 0.4, 0.6]})
    fig = search_figure(df, "data.window", "model.cell", "t")
    ax = fig.axes[0]
    assert [t.get_text() for t in ax.get_xticklabels()] == ["10", "60"] and list(ax.get_xticks()) == [0, 1]
    xs = {float(x) for c in ax.collections for x, _ in c.get_offsets()}
    assert xs == {1.0}  # every trial on its value's tick, none beside it
    assert not ax.lines  # lstm's trials differ in lr as well: no line joins them
    plt.close(fig)
    fig = search_figure(df, "data.window", "model.cell", "t", lines=True)
    assert len(fig.axes[0].lines) == 2  # one per cell when nothing else was searched
    plt.close(fig)
    fig = search_figure(df, "model.cell", None, "t")  # a searched key of strings on the axis
    assert [t.get_text() for t in fig.axes[0].get_xticklabels()] == ["gru", "lstm"]
    plt.close(fig)


def test_trials_waiting_for_resources_are_reported_once_a_minute(monkeypatch, capsys):
    from types import SimpleNamespace

    import jobs.tune

    progress = jobs.tune._progress(load_search(CONFIG, ["tune.num_samples=32"]))
    trials = [SimpleNamespace(status=s) for s in ["RUNNING"] * 3 + ["PENDING"] * 29]
    progress.on_step_end(0, trials)
    assert capsys.readouterr().out == ""  # not before a minute has passed
    monkeypatch.setattr(jobs.tune, "STATUS_EVERY_S", 0)
    progress.on_step_end(1, trials)
    assert capsys.readouterr().out == ("[0/32] 3 running, 29 waiting for resources (on an autoscaling cluster: "
                                       "until its nodes start)\n")
    progress.on_step_end(2, [SimpleNamespace(status="RUNNING")] * 4)
    assert capsys.readouterr().out == ""  # nothing waits: nothing to say


def test_search_plot_of_300_trials_spreads_points_in_their_column_and_shows_the_best():
    import matplotlib.pyplot as plt
    import numpy as np
    import pandas as pd

    from rnnlib.plots import search_figure

    rng = np.random.default_rng(1)
    df = pd.DataFrame({"data.window": rng.choice([10, 20, 30], 300), "model.cell": rng.choice(["rnn", "gru"], 300),
                       "status": "done", "stopped": rng.choice(["asha", "max_t"], 300),
                       "best_val_loss": 0.3 + rng.exponential(0.05, 300)})
    ax = search_figure(df, "data.window", "model.cell", "t").axes[0]
    index = {10: 0, 20: 1, 30: 2}
    points = np.concatenate([c.get_offsets() for c in ax.collections if len(c.get_offsets())])
    assert len(points) == 300
    for px, loss in points:  # each trial within its own value's column, and not all on the tick
        (window,) = df.loc[df["best_val_loss"] == loss, "data.window"]
        assert abs(px - index[window]) < 0.5
    assert len({round(px, 3) for px, _ in points}) > 100
    top = df["best_val_loss"].quantile(0.9)
    assert ax.get_ylim()[1] < df["best_val_loss"].max() and ax.get_ylim()[1] >= top
    assert f"the worst {(df['best_val_loss'] > top).sum()} are above the plot" in ax.get_title()
    plt.close(ax.figure)
