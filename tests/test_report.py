"""Results a person can read: `fer report`'s table from run folders as the trainer writes them, the
README block it keeps current, plot titles and panels, label order, labelled grids, and PNG files
whose bytes do not change between two runs."""

from __future__ import annotations

import json
import re
import shutil
import stat
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import torch
from typer.testing import CliRunner

from fer_cli.main import app
from fer_data import catalog
from fer_data.catalog import DatasetRows
from fer_models import evaluate as evaluate_module
from fer_models.config import TrainConfig
from fer_models.evaluate import EvalResult, write_report
from fer_models.report import BEGIN, END, replace_block, results_table

ROOT = Path(__file__).resolve().parent.parent


def write_run(runs: Path, name: str, metrics: dict[str, Any], **config: Any) -> None:
    """A finished run folder as the trainer leaves it: config.json (every setting) and metrics.json."""
    folder = runs / name
    folder.mkdir(parents=True)
    (folder / "config.json").write_text(json.dumps(TrainConfig(out=f"runs/{name}", **config).to_dict(), indent=2))
    (folder / "metrics.json").write_text(json.dumps(metrics, indent=2, sort_keys=True))


def write_demo_runs(runs: Path, order: list[str] | None = None) -> Path:
    """Runs as the demo writes them (three AUFormer folds, a multitask run, MAE) + the cross-dataset JSON."""
    folds = {1: (0.36, 0.45, 96), 2: (0.21, 0.47, 48), 3: (0.46, 0.45, 48)}
    makers = {
        "lp": lambda: write_run(runs, "lp", {"emotion/uar": 0.4151, "emotion/war": 0.4242, "gender/accuracy": 0.5244,
                                             "age_bin/accuracy": 0.1351, "loss": 1.78, "n_samples": 318},
                                method="multitask", peft="lp"),
        "mae": lambda: write_run(runs, "mae", {"loss": 0.6487, "n_samples": 318}, method="mae", tasks=[]),
        "thesis": lambda: write_run(runs, "thesis", {"emotion/uar": 0.39, "loss": 3.7, "n_samples": 148},
                                    method="multitask", test_where=" OR ".join(
                                        f"dataset = '{d}'" for d in ["fairface", "rafdb", "utkface", "vggface2"])),
        **{f"auformer/fold{k}": (lambda k=k, f=f: write_run(
            runs, f"auformer/fold{k}", {"au/f1_mean": f[0], "au/f1_mean_all_present": f[1], "au/f1_mean_random": 0.3,
                                         "au/f1_au1": 0.1, "loss": 0.25, "n_samples": f[2]},
            method="auformer", fold=k, aus=[1, 2], au_rates=[0.1 * k, 0.2],
            test_where="dataset = 'bp4d' AND split = 'test'")) for k, f in folds.items()},
    }
    for name in order or sorted(makers):
        makers[name]()
    (runs / "lp" / "dvclive").mkdir()  # dvclive's metrics.json and `fer evaluate`'s eval/ are not runs
    (runs / "lp" / "dvclive" / "metrics.json").write_text('{"train": {"loss": 1.0}}')
    (runs / "lp" / "eval").mkdir()
    (runs / "lp" / "eval" / "metrics.json").write_text('{"emotion/uar": 0.9}')
    cross = runs.parent / "cross_dataset.json"
    cross.write_text(json.dumps({"uar": {"lp": {"rafdb": 0.5714285714, "sfew": 0.25, "mean": 0.41}},
                                 "war": {"lp": {"rafdb": 0.5714285714, "sfew": 0.3, "mean": 0.43}}}))
    return cross


def table_rows(text: str) -> list[list[str]]:
    return [[c.strip() for c in line.strip("|").split("|")] for line in text.splitlines()
            if line.startswith("|") and not line.startswith("|:")]


def test_table_one_row_per_experiment_folds_as_mean_and_std(tmp_path: Path) -> None:
    cross = write_demo_runs(tmp_path / "runs")
    text = results_table(tmp_path / "runs", cross)
    rows = table_rows(text)
    assert rows[0] == ["run", "test data", "n", "UAR", "WAR", "AU F1", "age", "gender", "loss"]
    body = {(r[0], r[1]): r[2:] for r in rows[1:]}
    f1 = [0.36, 0.21, 0.46]
    assert body[("auformer/fold1-3", "bp4d")] == ["192", "–", "–", f"{np.mean(f1):.2f}", "–", "–", "0.25"]
    assert body[("± std over 3 folds", "")] == ["", "–", "–", f"{np.std(f1):.2f}", "–", "–", "0.00"]
    assert body[("lp (multitask)", "all")] == ["318", "0.42", "0.42", "–", "0.14", "0.52", "1.78"]
    assert body[("lp (multitask)", "rafdb")] == ["–", "0.57", "0.57", "–", "–", "–", "–"]
    assert body[("lp (multitask)", "sfew")] == ["–", "0.25", "0.30", "–", "–", "–", "–"]
    assert body[("mae", "all")] == ["318", "–", "–", "–", "–", "–", "0.65"]
    assert body[("thesis (multitask)", "4 datasets")][:2] == ["148", "0.39"]  # too many names to list
    assert len(rows) == 1 + 7  # no row for dvclive/, eval/ or the cross-dataset mean
    assert "every AU present 0.46, random at training rates 0.30" in " ".join(text.split())
    assert max(len(line) for line in text.splitlines()) < 100


def test_table_bytes_depend_only_on_the_metrics(tmp_path: Path) -> None:
    a = write_demo_runs(tmp_path / "a" / "runs")
    b = write_demo_runs(tmp_path / "b" / "runs", order=["mae", "thesis", "auformer/fold3", "lp", "auformer/fold1", "auformer/fold2"])
    assert results_table(tmp_path / "a" / "runs", a) == results_table(tmp_path / "b" / "runs", b)


def test_no_runs_is_one_clear_error(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="no finished runs under"):
        results_table(tmp_path, None)


def test_replace_block_rewrites_only_between_the_markers(tmp_path: Path) -> None:
    readme = tmp_path / "README.md"
    readme.write_text(f"# title\n\nbefore\n{BEGIN}\nold table\n{END}\nafter\n")
    readme.chmod(0o644)
    assert replace_block(readme, "| a |\n|---|\n| 1 |\n")
    assert readme.read_text() == f"# title\n\nbefore\n{BEGIN}\n| a |\n|---|\n| 1 |\n{END}\nafter\n"
    assert stat.S_IMODE(readme.stat().st_mode) == 0o644
    assert [p.name for p in tmp_path.iterdir()] == ["README.md"]  # no temporary file left
    before = readme.stat().st_mtime_ns
    assert not replace_block(readme, "| a |\n|---|\n| 1 |")  # same block: the file is not rewritten
    assert readme.stat().st_mtime_ns == before
    readme.write_text("no markers\n")
    with pytest.raises(ValueError, match="results:begin"):
        replace_block(readme, "x")
    assert readme.read_text() == "no markers\n"


def test_fer_report_prints_the_block_it_writes_into_the_readme(tmp_path: Path) -> None:
    cross = write_demo_runs(tmp_path / "runs")
    readme = tmp_path / "README.md"
    readme.write_text(f"intro\n{BEGIN}\n{END}\n")
    result = CliRunner().invoke(app, ["report", "--runs", str(tmp_path / "runs"), "--cross-dataset", str(cross),
                                      "--readme", str(readme)])
    assert result.exit_code == 0, result.output
    assert readme.read_text() == f"intro\n{BEGIN}\n{result.output}{END}\n"
    assert result.output.rstrip("\n") == results_table(tmp_path / "runs", cross)


def test_readme_and_demo_keep_the_results_block_current() -> None:
    """The README holds one results block, and `make demo` rewrites it as its last step but the plots' path."""
    readme = (ROOT / "README.md").read_text()
    assert readme.count(BEGIN) == readme.count(END) == 1 and readme.index(BEGIN) < readme.index(END)
    block = readme[readme.index(BEGIN) + len(BEGIN):readme.index(END)].strip()
    assert block.startswith("| run ") and max(len(line) for line in block.splitlines()) < 100
    recipe = re.search(r"^demo:.*\n((?:\t.*\n)+)", (ROOT / "Makefile").read_text(), flags=re.M)
    assert recipe, "Makefile has no demo recipe"
    commands = [line.strip().lstrip("@") for line in recipe.group(1).splitlines()]
    assert "fer report --readme README.md" in commands
    assert all(c.startswith("echo") for c in commands[commands.index("fer report --readme README.md") + 1:])
    assert not any("dvc metrics show" in c or c.startswith("fer stats") for c in commands)
    dag = readme[readme.index("```mermaid"):].split("```")[1]  # the compact dag
    for stage in ("sample_data", "ingest", "catalog", "train", "cafe", "evaluate", "auformer", "pe_clip", "pf_vit"):
        assert stage in dag
    assert max(len(line) for line in dag.splitlines()) < 100


# --- plots ---


@contextmanager
def recording_plots(monkeypatch: pytest.MonkeyPatch, module: Any) -> Iterator[dict[str, Any]]:
    """Each figure `module` saves, by file name: the figure, inspected after drawing (real PNGs still written)."""
    figures: dict[str, Any] = {}
    real = module.plot_to

    @contextmanager
    def recording(path: Path, figsize: tuple[float, float], **kw: Any) -> Iterator[Any]:
        with real(path, figsize, **kw) as axes:
            yield axes
            figures[Path(path).name] = np.atleast_1d(axes)[0].figure

    monkeypatch.setattr(module, "plot_to", recording)
    yield figures


def eval_result() -> EvalResult:
    """Predictions on two datasets' test samples, as `evaluate` returns them for a multitask run."""
    rng = np.random.default_rng(0)
    n = 12
    ids = [f"rafdb:test_{i:04d}.jpg" for i in range(8)] + [f"sfew:Val/Happy/{i}.png" for i in range(4)]
    return EvalResult({"emotion/uar": 0.5, "loss": 1.0, "n_samples": n},
                      {"emotion": rng.integers(0, 7, n), "age_bin": rng.integers(0, 9, n)},
                      {"emotion": rng.normal(size=(n, 7)), "age_bin": rng.normal(size=(n, 9))},
                      ids, method="cafe", run="runs/cafe")


HISTORY = [{"epoch": e, "train/loss": 3.0 / e, "train/loss_ce": 1.0 / e, "train/loss_group": 1.5 / e,
            "train/loss_diverse": 0.5 / e, "val/loss": 2.5 / e, "val/emotion/war": 0.1 * e,
            "val/emotion/uar": 0.1 * e, "val/emotion/macro_f1": 0.08 * e, "val/age_bin/accuracy": 0.05 * e,
            "val/au/f1_au1": 0.2}
           for e in (1, 2, 3)]


def test_plots_name_method_run_and_test_sets_and_curves_get_panels(tmp_path: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "run").mkdir()
    with recording_plots(monkeypatch, evaluate_module) as figures:
        write_report(eval_result(), tmp_path / "run", history=HISTORY)
    title = figures["confusion_emotion.png"].axes[0].get_title()
    assert "emotion" in title and "cafe (runs/cafe)" in title and "rafdb 8, sfew 4" in title
    assert "age_bin" in figures["confusion_age_bin.png"].axes[0].get_title()
    curves = figures["training_curves.png"]
    panels = {ax.get_title(): sorted(line.get_label() for line in ax.get_lines()) for ax in curves.axes}
    assert panels == {
        "loss": ["train/loss", "val/loss"],
        "training loss parts": ["train/loss_ce", "train/loss_diverse", "train/loss_group"],
        "validation emotion": ["val/emotion/macro_f1", "val/emotion/uar", "val/emotion/war"],
        "validation age_bin": ["val/age_bin/accuracy"],
    }
    assert "cafe (runs/cafe)" in curves._suptitle.get_text()


def test_plot_files_are_byte_identical_run_to_run(tmp_path: Path) -> None:
    for name in ("a", "b"):
        (tmp_path / name).mkdir()
        write_report(eval_result(), tmp_path / name, history=HISTORY)
    pngs = sorted(p.relative_to(tmp_path / "a") for p in (tmp_path / "a").rglob("*.png"))
    assert len(pngs) == 3
    for rel in pngs:
        data = (tmp_path / "a" / rel).read_bytes()
        assert data == (tmp_path / "b" / rel).read_bytes(), rel
        assert b"Software" not in data and b"atplotlib" not in data  # no version stamp: same bytes after an upgrade


def _sample(sample_id: str, dataset: str, **labels: Any) -> dict[str, Any]:
    return {"sample_id": sample_id, "dataset": dataset, "split": "train", "kind": "image",
            "source_path": f"{sample_id}.jpg", **labels}


def test_class_balance_keeps_age_bins_in_age_order(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import flows.catalog as catalog_flow

    db = tmp_path / "catalog.duckdb"
    bins = [0, 1, 2, 3, 8, 2]  # "0-2", "3-9", "10-19", "20-29", "70+": text order would be 0-2, 10-19, 20-29, 3-9, 70+
    samples = [_sample(f"utk{i}", "utkface", age_bin=b, gender=i % 2) for i, b in enumerate(bins)]
    catalog.replace_dataset(db, DatasetRows("utkface", "raw", len(samples), {}, [{"samples": samples}]))
    with recording_plots(monkeypatch, catalog_flow) as figures:
        catalog_flow.plot_class_balance(db, tmp_path / "plots", tmp_path / "balance.csv")
    df = pd.read_csv(tmp_path / "balance.csv")
    ages = df[df.task == "age_bin"]
    assert ages.label_name.tolist() == ["0-2", "3-9", "10-19", "20-29", "70+"]
    assert ages.n.tolist() == [1, 1, 2, 1, 1]
    legend = figures["class_balance_age_bin.png"].axes[0].get_legend()
    assert [t.get_text() for t in legend.get_texts()] == ["0-2", "3-9", "10-19", "20-29", "70+"]
    assert df[df.task == "gender"].label_name.tolist() == ["male", "female"]


def test_mae_and_pf_vit_grids_name_their_rows() -> None:
    from fer_models.methods.mae import Mae
    from fer_models.methods.pf_vit import PfVit

    faces = (torch.rand(2, 3, 112, 112, generator=torch.Generator().manual_seed(0)) * 255).to(torch.uint8)
    for grid in (Mae(TrainConfig(method="mae", backbone="mae-test")).figures(faces)["mae_reconstruction"],
                 PfVit(TrainConfig(method="pf_vit", backbone="mae-test")).figures(faces)["pf_vit_poker_faces"]):
        side = grid.shape[0] // 3  # three rows of 32 px faces
        strip = grid[:, : grid.shape[1] - 2 * side]
        assert strip.shape[1] > 0, "no label strip left of the faces"
        for row in range(3):  # each row's band of the strip holds dark text on white
            band = strip[row * side:(row + 1) * side]
            assert band.min() < 100 and np.median(band) == 255


def test_failed_readme_write_keeps_the_old_file(tmp_path: Path) -> None:
    """A failed write leaves the old README and no temporary file."""
    readme = tmp_path / "README.md"
    readme.write_text(f"{BEGIN}\nold\n{END}\n")

    class Boom(Exception):
        pass

    def fail(*_: Any) -> None:
        raise Boom

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(shutil, "copymode", fail)
        with pytest.raises(Boom):
            replace_block(readme, "new")
    assert readme.read_text() == f"{BEGIN}\nold\n{END}\n"
    assert [p.name for p in tmp_path.iterdir()] == ["README.md"]
