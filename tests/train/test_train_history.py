"""History: list behaviour, summaries, JSON and CSV round trips."""

import csv
import json
import math

import pytest

from bnlab.train import EpochRecord, History


def _record(epoch, test_acc, **overrides):
    values = dict(
        epoch=epoch, train_loss=1.0 / epoch, train_acc=50.0 + epoch,
        test_loss=0.1 * epoch + 1e-17, test_acc=test_acc, seconds=2.5 + epoch,
        samples_per_s=1000.0 / 3, peak_memory_bytes=2**40 + epoch,
    )  # fmt: skip
    values.update(overrides)
    return EpochRecord(**values)


@pytest.fixture
def history():
    return History([_record(1, 80.07), _record(2, 88.29), _record(3, 87.15)])


def test_list_behaviour(history):
    assert len(history) == 3
    assert history[-1].epoch == 3
    assert [r.epoch for r in history] == history.epochs == [1, 2, 3]
    assert isinstance(history[1:], History) and history[1:].epochs == [2, 3]
    history.append(_record(4, 1.0))
    history.extend([_record(5, 2.0)])
    assert history.epochs == [1, 2, 3, 4, 5]


def test_summaries(history):
    assert history.final_test_acc == 87.15
    assert history.best_test_acc == 88.29
    assert history.best_epoch == 2
    assert history.final_train_loss == 1.0 / 3
    assert history.mean_epoch_seconds == pytest.approx((3.5 + 4.5 + 5.5) / 3)
    assert history.peak_memory_bytes == 2**40 + 3
    assert history.column("test_acc") == [80.07, 88.29, 87.15]
    with pytest.raises(KeyError, match="fields"):
        history.column("accuracy")


def test_best_epoch_takes_the_first_tie():
    assert History([_record(1, 90.0), _record(2, 90.0)]).best_epoch == 1


def test_empty_history():
    empty = History()
    assert len(empty) == 0 and repr(empty) == "History(0 epochs)"
    with pytest.raises(ValueError, match="empty"):
        _ = empty.final_test_acc
    with pytest.raises(ValueError, match="empty"):
        _ = empty.best_test_acc


def test_repr_is_one_short_line(history):
    text = repr(history)
    assert "\n" not in text and "3 epochs" in text and "88.29% at epoch 2" in text


def test_json_round_trip_is_exact(history):
    restored = History.from_dict(json.loads(json.dumps(history.to_dict())))
    assert restored == history
    assert isinstance(restored[0].peak_memory_bytes, int)


def test_from_dict_rejects_bad_rows(history):
    data = history.to_dict()
    del data["epochs"][1]["seconds"]
    with pytest.raises(ValueError, match="row 1"):
        History.from_dict(data)
    data = history.to_dict()
    data["epochs"][0]["extra"] = 1
    with pytest.raises(ValueError, match="row 0"):
        History.from_dict(data)


@pytest.mark.parametrize("data", [{}, {"epoch": []}, [], {"epochs": {}}, {"epochs": [1]}])
def test_from_dict_rejects_what_is_not_a_history(data):
    with pytest.raises(ValueError):
        History.from_dict(data)


@pytest.mark.parametrize("field, value", [("epoch", 2.7), ("epoch", True),
                                          ("peak_memory_bytes", "1"), ("train_loss", "0.5"),
                                          ("test_acc", None)])
def test_from_dict_rejects_values_of_other_types(history, field, value):
    data = history.to_dict()
    data["epochs"][0][field] = value
    with pytest.raises(ValueError, match=f"row 0: {field} must be"):
        History.from_dict(data)


def test_plots_refuse_a_history_without_epochs(tmp_path):
    from bnlab.experiment.plots import plot_curves, plot_overlay

    for plot in (lambda: plot_curves(History(), tmp_path / "a.png"),
                 lambda: plot_overlay({}, tmp_path / "b.png"),
                 lambda: plot_overlay({"run": History()}, tmp_path / "c.png")):
        with pytest.raises(ValueError, match="nothing to plot|no runs"):
            plot()
    assert list(tmp_path.iterdir()) == []


def test_csv(tmp_path, history):
    path = tmp_path / "metrics.csv"
    history.to_csv(path)
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    assert list(rows[0]) == [
        "epoch", "train_loss", "train_acc", "test_loss", "test_acc",
        "seconds", "samples_per_s", "peak_memory_bytes",
    ]  # fmt: skip
    for row, record in zip(rows, history, strict=True):
        assert int(row["epoch"]) == record.epoch
        assert int(row["peak_memory_bytes"]) == record.peak_memory_bytes
        for name in ("train_loss", "test_loss", "test_acc", "samples_per_s"):
            assert float(row[name]) == getattr(record, name)  # full precision


def test_metrics_leave_out_timings():
    record = _record(1, 50.0, seconds=math.pi)
    assert set(record.metrics()) == {"epoch", "train_loss", "train_acc", "test_loss", "test_acc"}
