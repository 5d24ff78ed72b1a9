"""fer_models.metrics on small cases whose expected values are worked out by hand below."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from fer_models import metrics as M

Y_TRUE = np.array([0, 0, 1, 2])
Y_PRED = np.array([0, 1, 1, 1])


def test_war_uar_basic():
    assert M.war(Y_TRUE, Y_PRED) == pytest.approx(0.5)  # 2 of 4 right
    # recalls: class 0 -> 1/2, class 1 -> 1/1, class 2 -> 0/1
    assert M.uar(Y_TRUE, Y_PRED) == pytest.approx((0.5 + 1.0 + 0.0) / 3)


def test_uar_differs_from_war_on_imbalance():
    # 4 of class 0 all right, 1 of class 1 wrong: war 4/5, uar (1 + 0)/2
    t, p = np.array([0, 0, 0, 0, 1]), np.array([0, 0, 0, 0, 0])
    assert M.war(t, p) == pytest.approx(0.8)
    assert M.uar(t, p) == pytest.approx(0.5)


def test_uar_only_counts_classes_present_in_y_true():
    # class 3 is predicted but absent from y_true: it must not add a 0 recall
    t, p = np.array([0, 0, 1]), np.array([0, 3, 1])
    assert M.uar(t, p) == pytest.approx((0.5 + 1.0) / 2)


def test_macro_f1_hand_computed():
    # class 0: tp1 fp0 fn1 -> 2/3 ; class 1: tp1 fp2 fn0 -> 2/4 ; class 2: tp0 fp0 fn1 -> 0
    assert M.macro_f1(Y_TRUE, Y_PRED) == pytest.approx((2 / 3 + 1 / 2 + 0) / 3)


def test_macro_f1_counts_predicted_only_class_as_zero():
    # class 0: tp1 fn1 -> 2/3 ; class 3 only predicted: F1 0
    assert M.macro_f1([0, 0], [0, 3]) == pytest.approx((2 / 3 + 0) / 2)


def test_ignored_entries_dropped_everywhere():
    t = np.array([0, -100, 0, 1, 2, -100])
    p = np.array([0, 2, 1, 1, 1, 0])  # the ignored rows carry wrong predictions
    assert M.war(t, p) == pytest.approx(M.war(Y_TRUE, Y_PRED))
    assert M.uar(t, p) == pytest.approx(M.uar(Y_TRUE, Y_PRED))
    assert M.macro_f1(t, p) == pytest.approx(M.macro_f1(Y_TRUE, Y_PRED))
    assert M.age_bin_accuracy(t, p) == pytest.approx(0.5)
    assert M.gender_accuracy([1, -100, 0], [1, 0, 1]) == pytest.approx(0.5)


@pytest.mark.parametrize("fn", [M.war, M.uar, M.macro_f1, M.age_bin_accuracy, M.gender_accuracy])
def test_empty_or_all_ignored_is_nan(fn):
    assert math.isnan(fn([], []))
    assert math.isnan(fn([-100, -100], [0, 1]))


def test_shape_mismatch_raises():
    with pytest.raises(ValueError):
        M.war([0, 1], [0, 1, 1])


def test_au_f1_ignores_unknown_entries():
    y = np.array([[1, 0], [1, 1], [0, -1], [1, 0]])
    s = np.array([[0.9, 0.2], [0.4, 0.7], [0.6, 0.9], [0.8, 0.1]])
    # AU0: pred [1,0,1,1] vs true [1,1,0,1] -> tp2 fp1 fn1 -> 4/6
    # AU1: row 2 unknown; pred [0,1,0] vs true [0,1,0] -> 1 (counting row 2 would give 2/3)
    f1 = M.au_f1(y, s)
    assert f1.shape == (2,)
    np.testing.assert_allclose(f1, [2 / 3, 1.0])
    assert M.au_f1_mean(y, s) == pytest.approx((2 / 3 + 1) / 2)


def test_au_f1_threshold_and_mask():
    y = np.array([[1.0], [0.0], [1.0]])
    logits = np.array([[0.5], [-0.2], [-1.0]])
    # threshold 0 on logits: pred [1,0,0] -> tp1 fn1 -> 2/3
    np.testing.assert_allclose(M.au_f1(y, logits, threshold=0.0), [2 / 3])
    # masking the missed positive leaves tp1 only -> 1
    np.testing.assert_allclose(M.au_f1(y, logits, threshold=0.0, mask=np.array([[1], [1], [0]])), [1.0])


def test_au_f1_undefined_is_nan_and_skipped_by_mean():
    y = np.array([[1, 0], [0, 0]])
    s = np.array([[0.9, 0.1], [0.2, 0.3]])  # AU1: no positives, none predicted
    f1 = M.au_f1(y, s)
    assert f1[0] == pytest.approx(1.0) and math.isnan(f1[1])
    assert M.au_f1_mean(y, s) == pytest.approx(1.0)
    assert math.isnan(M.au_f1_mean(np.zeros((2, 1)), np.zeros((2, 1))))


def test_au_f1_false_positive_on_all_negative_au_is_zero():
    assert M.au_f1(np.array([[0], [0]]), np.array([[0.9], [0.1]]))[0] == 0.0


def test_age_mae_in_years_ignores_missing():
    assert M.age_mae([20, 30, np.nan, -100], [25, 28, 40, 3]) == pytest.approx((5 + 2) / 2)
    assert math.isnan(M.age_mae([np.nan], [3.0]))


def test_confusion_matrix():
    cm = M.confusion_matrix([0, 0, 1, 2, -100], [0, 1, 1, 1, 2], num_classes=3)
    expected = np.array([[1, 1, 0], [0, 1, 0], [0, 1, 0]])
    np.testing.assert_array_equal(cm, expected)
    assert cm.dtype.kind == "i"
    # diagonal / total is war
    assert np.trace(cm) / cm.sum() == pytest.approx(M.war(Y_TRUE, Y_PRED))
    with pytest.raises(ValueError):
        M.confusion_matrix([7], [0], num_classes=7)


def test_cross_dataset_matrix_shape_and_labels():
    res = {("rafdb", "rafdb"): 0.9, ("rafdb", "ferplus"): 0.6, ("ferplus", "rafdb"): 0.7, ("rafdb", "sfew"): 0.4}
    df = M.cross_dataset_matrix(res)
    assert isinstance(df, pd.DataFrame)
    assert df.shape == (2, 3)
    assert list(df.index) == ["rafdb", "ferplus"] and df.index.name == "train"
    assert list(df.columns) == ["rafdb", "ferplus", "sfew"] and df.columns.name == "test"
    assert df.loc["ferplus", "rafdb"] == pytest.approx(0.7)
    assert math.isnan(df.loc["ferplus", "sfew"])
    means = M.cross_dataset_matrix(res, mean_column=True)["mean"]
    assert means["rafdb"] == pytest.approx((0.9 + 0.6 + 0.4) / 3)
    assert means["ferplus"] == pytest.approx(0.7)


def test_cross_dataset_eval_uses_chosen_metric():
    runs = [
        ("a", "a", Y_TRUE, Y_PRED),
        ("a", "b", [0, 0, 0, 1], [0, 0, 0, 0]),
        ("b", "a", [1, 1], [1, 1]),
    ]
    df = M.cross_dataset_eval(runs, metric="uar")
    assert df.loc["a", "a"] == pytest.approx(0.5)
    assert df.loc["a", "b"] == pytest.approx(0.5)  # war would be 0.75
    assert df.loc["b", "a"] == pytest.approx(1.0)
    assert M.cross_dataset_eval(runs, metric=M.war).loc["a", "b"] == pytest.approx(0.75)
    with pytest.raises(ValueError):
        M.cross_dataset_eval(runs + [("a", "a", [0], [0])])


def test_summarize_per_task():
    emo = M.summarize("emotion", Y_TRUE, Y_PRED)
    assert set(emo) == {"war", "uar", "macro_f1"}
    assert emo["macro_f1"] == pytest.approx((2 / 3 + 1 / 2) / 3)
    # scores [N, K] are argmaxed
    scores = np.eye(3)[Y_PRED]
    assert M.summarize("emotion", Y_TRUE, scores) == emo
    assert M.summarize("gender", [0, 1, -100], [0, 0, 1]) == {"accuracy": 0.5, "balanced_accuracy": 0.5}
    assert M.summarize("age_bin", [8, 3], [8, 3]) == {"accuracy": 1.0, "balanced_accuracy": 1.0}
    # the thesis' balanced accuracy: mean recall per class, so the majority class cannot carry it
    assert M.summarize("gender", [0, 0, 0, 1], [0, 0, 0, 0]) == {"accuracy": 0.75, "balanced_accuracy": 0.5}
    au = M.summarize("au", np.array([[1, 0], [0, 1]]), np.array([[0.9, 0.6], [0.1, 0.2]]), au_names=[1, 12])
    # AU1 perfect -> 1 ; AU12: tp0 fp1 fn1 -> 0
    assert au == {"f1_mean": 0.5, "f1_au1": 1.0, "f1_au12": 0.0}
    assert all(isinstance(v, float) for v in au.values())
    with pytest.raises(ValueError):
        M.summarize("valence", [0], [0])


def test_au_f1_baselines_hand_computed() -> None:
    """AU0: test rate 1/2; AU1: 1/3 among its 3 known labels. All present: 2r/(1+r) = 2/3 and 1/2.
    Random at training rates q = (1/2, 1/4): 2rq/(r+q) = 1/2 and (1/6)/(7/12) = 2/7."""
    y = [[1, 0], [0, 0], [1, -1], [0, 1]]
    got = M.au_f1_baselines(y, [0.5, 0.25])
    assert got["f1_mean_all_present"] == pytest.approx((2 / 3 + 1 / 2) / 2)
    assert got["f1_mean_random"] == pytest.approx((1 / 2 + 2 / 7) / 2)
