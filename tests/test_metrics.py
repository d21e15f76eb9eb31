import numpy as np
from sklearn.metrics import accuracy_score, average_precision_score, f1_score, roc_auc_score

from hdmap_ad.metrics.image import best_accuracy, detection_metrics, f1_max, round_floats


def _data(seed=0, n=200):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, n)
    s = rng.normal(0, 1, n) + 1.2 * y
    return y, s


def test_against_sklearn():
    y, s = _data()
    m = detection_metrics(y, s, best_thr=0.5, deploy_thr=1.0)
    assert np.isclose(m["auroc"], roc_auc_score(y, s))
    assert np.isclose(m["aupr"], average_precision_score(y, s))
    assert np.isclose(m["accuracy_deployable"], accuracy_score(y, s >= 1.0))
    assert m["n_good"] + m["n_fault"] == len(y)


def test_f1_max_is_max_over_thresholds():
    y, s = _data(1)
    brute = max(f1_score(y, s >= t) for t in np.unique(s))
    assert np.isclose(f1_max(y, s), brute)


def test_best_accuracy_is_max_over_thresholds():
    y, s = _data(2)
    acc, thr = best_accuracy(y, s)
    brute = max(max(accuracy_score(y, s >= t) for t in np.unique(s)), accuracy_score(y, s > 1e9))
    assert np.isclose(acc, brute)
    assert np.isclose(accuracy_score(y, s >= thr), acc)


def test_best_accuracy_with_ties():
    y = np.array([0, 1, 0, 1])
    s = np.array([1.0, 1.0, 0.0, 2.0])
    acc, thr = best_accuracy(y, s)
    assert np.isclose(acc, 0.75) and np.isclose(accuracy_score(y, s >= thr), 0.75)


def test_round_floats_is_stable():
    obj = {"a": 0.1234567891, "b": [1.0, float("nan")], "c": {"d": 2}}
    assert round_floats(obj) == {"a": 0.123457, "b": [1.0, None], "c": {"d": 2}}
