"""VOC average precision on hand-computed cases: all-point, 11-point, ties, difficult, detection matching."""
from __future__ import annotations

import numpy as np
import pytest

from pcl_bench.eval.voc_ap import (
    average_precision,
    box_iou_inclusive,
    classification_ap,
    detection_ap,
    mean_ap,
)
from pcl_bench.runtime.errors import UsageError

# Ranked list P N P N N P (3 positives): precision at the hits 1, 2/3, 3/6.
RANKED = np.array([1, -1, 1, -1, -1, 1])
SCORES = np.array([6.0, 5, 4, 3, 2, 1])


def test_all_point_ap_on_ranked_list():
    """Envelope already monotone: (1 + 2/3 + 1/2) / 3 = 13/18."""
    assert classification_ap(SCORES, RANKED) == pytest.approx(13 / 18)


def test_all_point_ap_takes_precision_envelope():
    """N P P: precisions 1/2, 2/3 at the hits; the envelope lifts 1/2 to 2/3, so AP = 2/3 (not 7/12)."""
    assert classification_ap(np.array([3.0, 2, 1]), np.array([-1, 1, 1])) == pytest.approx(2 / 3)


def test_eleven_point_ap_on_ranked_list():
    """Recall 1/3, 2/3, 1 with max precision 1, 2/3, 1/2.

    t = 0..0.3 -> 1, t = 0.4..0.6 -> 2/3, t = 0.7..1 -> 1/2: (4 + 2 + 2) / 11.
    """
    assert classification_ap(SCORES, RANKED, eleven_point=True) == pytest.approx(8 / 11)


def test_eleven_point_counts_recall_exactly_at_threshold():
    """Recall exactly 0.3 serves t = 0.3 (4 thresholds at precision 1, 7 at 1/2).

    Summing 0.1 steps gives t = 0.30000000000000004 and would miss it.
    """
    assert average_precision(np.array([0.3, 1.0]), np.array([1.0, 0.5]), eleven_point=True) == \
        pytest.approx(7.5 / 11)


def test_empty_ranking_and_missed_recall_give_zero_area():
    """No detections -> 0; recall stopping at 1/2 with precision 1 -> 1/2 (the rest has precision 0)."""
    assert average_precision(np.zeros(0), np.zeros(0)) == 0.0
    assert average_precision(np.zeros(0), np.zeros(0), eleven_point=True) == 0.0
    assert average_precision(np.array([0.5]), np.array([1.0])) == pytest.approx(0.5)


def test_ties():
    """Ties within one label do not matter; a positive/negative tie keeps the input order."""
    assert classification_ap(np.array([0.9, 0.5, 0.5, 0.1]), np.array([1, -1, -1, 1])) == pytest.approx(0.75)
    # N P P N: precisions 1/2, 2/3 at the hits, the envelope makes both 2/3.
    assert classification_ap(np.array([0.9, 0.5, 0.5, 0.1]), np.array([-1, 1, 1, -1])) == pytest.approx(2 / 3)
    assert classification_ap(np.array([0.5, 0.5]), np.array([-1, 1])) == pytest.approx(0.5)
    assert classification_ap(np.array([0.5, 0.5]), np.array([1, -1])) == pytest.approx(1.0)


def test_classification_difficult_handling():
    """P D P N: PCL counts D as negative -> (1 + 2/3) / 2; Goyal drops it -> P P N -> 1."""
    scores, labels = np.array([0.9, 0.8, 0.7, 0.6]), np.array([1, 0, 1, -1])
    assert classification_ap(scores, labels) == pytest.approx(5 / 6)
    assert classification_ap(scores, labels, ignore_difficult=True) == pytest.approx(1.0)


def test_classification_ap_bad_input():
    with pytest.raises(UsageError, match="without positive"):
        classification_ap(np.array([0.1, 0.2]), np.array([-1, 0]))
    with pytest.raises(UsageError, match="VOC labels"):
        classification_ap(np.array([0.1, 0.2]), np.array([1, 2]))
    with pytest.raises(UsageError, match="one length"):
        classification_ap(np.array([0.1, 0.2]), np.array([1]))


def test_box_iou_uses_inclusive_pixels():
    """[1,1,10,10] has area 100; [1,1,10,5] covers 50 of its pixels -> IoU exactly 1/2 (continuous: 4/9)."""
    gt = np.array([[1.0, 1, 10, 10], [11, 11, 20, 20]])
    np.testing.assert_allclose(box_iou_inclusive(np.array([1.0, 1, 10, 5]), gt), [0.5, 0.0])


def test_detection_iou_threshold_is_inclusive():
    gt = {"a": (np.array([[1.0, 1, 10, 10]]), np.array([False]))}
    assert detection_ap((["a"], [1.0], [[1, 1, 10, 5]]), gt) == 1.0  # IoU 0.5 >= 0.5
    assert detection_ap((["a"], [1.0], [[1, 1, 10, 4]]), gt) == 0.0  # IoU 0.4


def test_detection_ap_hand_case():
    """TP, duplicate FP, two hits on a difficult gt (ignored), TP at IoU 90/110, FP, FP in an image
    without gt.

    3 non-difficult gts (one never found). Kept sequence T F T F F: recall 1/3 1/3 2/3 2/3 2/3, precision
    1 1/2 2/3 1/2 2/5. All-point: 1/3 * 1 + 1/3 * 2/3 = 5/9. 11-point: 4 * 1 + 3 * 2/3 + 4 * 0 over 11 = 6/11.
    """
    gt = {"a": (np.array([[1.0, 1, 10, 10], [21, 21, 30, 30]]), np.array([False, True])),
          "b": (np.array([[1.0, 1, 10, 10], [51, 51, 60, 60]]), np.array([False, False]))}
    dets = (["a", "a", "a", "a", "b", "b", "c"],
            np.array([0.95, 0.9, 0.85, 0.84, 0.8, 0.7, 0.6]),
            np.array([[1, 1, 10, 10], [1, 1, 10, 10], [21, 21, 30, 30], [22, 21, 30, 30],
                      [2, 1, 11, 10], [100, 100, 110, 110], [1, 1, 10, 10]], dtype=float))
    assert detection_ap(dets, gt, eleven_point=False) == pytest.approx(5 / 9)
    assert detection_ap(dets, gt) == pytest.approx(6 / 11)
    order = np.random.default_rng(0).permutation(7)  # input order does not matter without ties
    shuffled = ([dets[0][i] for i in order], dets[1][order], dets[2][order])
    assert detection_ap(shuffled, gt, eleven_point=False) == pytest.approx(5 / 9)


def test_detection_goes_to_best_gt_even_if_matched():
    """Devkit rule: the second box's best gt (IoU 1) is taken, so it is a duplicate FP although another gt
    has IoU 100/120 >= 0.5 with it. Recall 1/2, 1/2 at precision 1, 1/2 -> all-point AP 1/2."""
    gt = {"x": (np.array([[1.0, 1, 10, 10], [1, 1, 10, 12]]), np.array([False, False]))}
    dets = (["x", "x"], np.array([0.9, 0.8]), np.array([[1.0, 1, 10, 10], [1, 1, 10, 10]]))
    assert detection_ap(dets, gt, eleven_point=False) == pytest.approx(0.5)


def test_detection_ap_bad_input():
    with pytest.raises(UsageError, match="non-difficult"):
        detection_ap((["a"], [1.0], [[1, 1, 2, 2]]), {"a": (np.array([[1.0, 1, 2, 2]]), np.array([True]))})
    with pytest.raises(UsageError, match="one of each"):
        detection_ap((["a", "b"], [1.0], [[1, 1, 2, 2]]),
                     {"a": (np.array([[1.0, 1, 2, 2]]), np.array([False]))})


def test_mean_ap():
    assert mean_ap({"cat": 0.5, "dog": 1.0}) == pytest.approx(0.75)
    with pytest.raises(UsageError):
        mean_ap({})
