import numpy as np
import pytest
import torch
import torch.nn.functional as F
from scipy import ndimage
from sklearn.metrics import roc_auc_score

from hdmap_ad.metrics.pixel import (
    anomaly_map,
    pixel_auroc,
    pixel_metrics,
    pro_curve,
    pro_score,
)

# ---------------------------------------------------------------- anomaly_map


def test_anomaly_map_shapes_and_dtype():
    rng = np.random.default_rng(0)
    g = rng.random((33, 33)).astype(np.float32)
    out = anomaly_map(g, (64, 80))
    assert out.shape == (64, 80) and out.dtype == np.float32
    out = anomaly_map(np.stack([g, g * 2, g + 1]), (64, 80))
    assert out.shape == (3, 64, 80) and out.dtype == np.float32
    # per image: each batch entry equals the single-image result
    np.testing.assert_allclose(out[1], anomaly_map(g * 2, (64, 80)), rtol=1e-5, atol=1e-6)


def test_anomaly_map_constant_stays_constant():
    out = anomaly_map(np.full((2, 33, 33), 3.5, np.float32), (224, 224))
    np.testing.assert_allclose(out, 3.5, rtol=1e-6)


def test_anomaly_map_hot_patch_blob_centre():
    g = np.zeros((16, 16), np.float32)
    g[5, 10] = 1.0
    out = anomaly_map(g, (128, 128))
    # patch (i, j) of a 16-grid in a 128 image has its centre at pixel 8 * i + 3.5
    cy, cx = 8 * 5 + 3.5, 8 * 10 + 3.5
    r, c = np.unravel_index(np.argmax(out), out.shape)
    assert r in (43, 44) and c in (83, 84)
    yy, xx = np.mgrid[:128, :128]
    w = out / out.sum()
    assert abs((w * yy).sum() - cy) < 0.05 and abs((w * xx).sum() - cx) < 0.05
    assert out.min() >= 0 and out[0, 0] < 1e-6  # far away stays ~0
    # symmetric about the centre
    np.testing.assert_allclose(out[43, 60:108], out[44, 60:108], rtol=1e-4, atol=1e-7)


def test_anomaly_map_matches_anomalib_style_torch_blur():
    """Bilinear + 33-tap gaussian conv with torch reflect padding (anomalib GaussianBlur2d)."""
    rng = np.random.default_rng(1)
    g = rng.random((2, 8, 8)).astype(np.float32)
    sigma = 4.0
    k = 2 * int(4.0 * sigma + 0.5) + 1
    assert k == 33
    x = torch.arange(k, dtype=torch.float64) - k // 2
    g1 = torch.exp(-(x**2) / (2 * sigma**2))
    g1 = g1 / g1.sum()
    kernel = (g1[:, None] * g1[None, :])[None, None]
    t = torch.from_numpy(g)[:, None].double()
    up = F.interpolate(t, size=(48, 40), mode="bilinear", align_corners=False)
    pad = k // 2
    ref = F.conv2d(F.pad(up, (pad, pad, pad, pad), mode="reflect"), kernel)[:, 0].numpy()
    np.testing.assert_allclose(anomaly_map(g, (48, 40), sigma), ref, rtol=1e-5, atol=1e-6)


# ---------------------------------------------------------------- pixel AUROC


def test_pixel_auroc_equals_sklearn():
    rng = np.random.default_rng(2)
    masks = rng.random((4, 20, 24)) < 0.1
    maps = rng.normal(size=masks.shape).astype(np.float32) + masks
    assert np.isclose(pixel_auroc(maps, masks), roc_auc_score(masks.ravel(), maps.ravel()))
    # 0/255 masks work too
    masks255 = masks.astype(np.uint8) * 255
    assert np.isclose(pixel_auroc(maps, masks255), pixel_auroc(maps, masks))


def test_pixel_auroc_perfect_and_single_class():
    masks = np.zeros((2, 10, 10), bool)
    masks[0, 2:5, 3:7] = True
    maps = masks * 1.0 + 0.01 * np.random.default_rng(3).random(masks.shape)
    assert pixel_auroc(maps, masks) == 1.0
    with pytest.raises(ValueError):
        pixel_auroc(maps, np.zeros_like(masks))


# ---------------------------------------------------------------- PRO


def brute_pro(maps, masks, max_fpr=0.3):
    """Straightforward AUPRO: loop over thresholds and regions, walk the curve segments."""
    regions = []
    for i in range(len(masks)):
        lab, n = ndimage.label(masks[i], structure=np.ones((3, 3)))
        regions += [(i, lab == k) for k in range(1, n + 1)]
    normal = ~masks
    pts = [(0.0, 0.0)]
    for t in sorted(set(maps.ravel().tolist()), reverse=True):
        pred = maps >= t
        fpr = (pred & normal).sum() / normal.sum()
        pro = np.mean([(pred[i] & r).sum() / r.sum() for i, r in regions])
        pts.append((fpr, pro))
    area = 0.0
    for (x0, y0), (x1, y1) in zip(pts[:-1], pts[1:], strict=True):
        if x0 >= max_fpr:
            break
        if x1 > max_fpr:
            y1 = y0 + (y1 - y0) * (max_fpr - x0) / (x1 - x0)
            x1 = max_fpr
        area += (x1 - x0) * (y0 + y1) / 2
    return area / max_fpr


def _blobs(seed, n=3, h=24, w=24):
    rng = np.random.default_rng(seed)
    masks = np.zeros((n, h, w), bool)
    yy, xx = np.mgrid[:h, :w]
    for i in range(n - 1):  # last image is good (no defect)
        for _ in range(2):
            cy, cx, r = rng.integers(4, h - 4), rng.integers(4, w - 4), rng.integers(1, 4)
            masks[i] |= (yy - cy) ** 2 + (xx - cx) ** 2 <= r * r
    maps = rng.normal(size=masks.shape) + 1.5 * masks
    maps = np.round(maps, 1).astype(np.float32)  # ties on purpose
    return maps, masks


def test_pro_perfect_map_is_one():
    _, masks = _blobs(4)
    assert pro_score(masks.astype(np.float32), masks) == pytest.approx(1.0)


def test_pro_hand_computed():
    # one 10x10 image, region A 2x2 (4 px), region B 4x4 (16 px), apart from each other
    masks = np.zeros((1, 10, 10), bool)
    masks[0, 0:2, 0:2] = True
    masks[0, 5:9, 5:9] = True
    maps = np.zeros((1, 10, 10), np.float32)
    maps[0, 0:2, 0:2] = 1.0  # A fully covered
    maps[0, 5:7, 5:9] = 1.0  # top half of B (8 px) covered, other half 0 like the normals
    # t = 1: FPR 0, PRO (1 + 1/2) / 2 = 0.75; t = 0: FPR 1, PRO 1.
    # curve (0,0) -> (0,0.75) -> (1,1); PRO at FPR 0.3 = 0.75 + 0.25 * 0.3 = 0.825
    expected = 0.3 * (0.75 + 0.825) / 2 / 0.3  # = 0.7875
    assert pro_score(maps, masks) == pytest.approx(expected)
    assert pro_score(maps, masks) == pytest.approx(brute_pro(maps, masks))
    fpr, pro = pro_curve(maps, masks)
    np.testing.assert_allclose(fpr, [0, 0, 1])
    np.testing.assert_allclose(pro, [0, 0.75, 1])
    # pixel-level recall at t = 1 is 12/20 = 0.6, not 0.75
    assert (maps[masks] >= 1).mean() == pytest.approx(0.6)


def test_pro_hand_computed_graded_normals():
    # 1 region of 4 px with values 4,3,2,1; 10 normal px with values 0.5 (x7), 2.5, 3.5, 5
    masks = np.zeros((1, 1, 14), bool)
    masks[0, 0, :4] = True
    maps = np.array([[[4, 3, 2, 1, 5, 3.5, 2.5] + [0.5] * 7]], np.float32)
    # t=5: (0.1, 0); 4: (0.1, .25); 3.5: (0.2, .25); 3: (0.2, .5); 2.5: (0.3, .5); ...
    # area to 0.3: 0.1*0 + 0.1*(0.25) + 0.1*(0.5) = 0.075 -> /0.3 = 0.25
    assert pro_score(maps, masks) == pytest.approx(0.25)
    assert pro_score(maps, masks, max_fpr=0.25) == pytest.approx((0.025 + 0.05 * 0.5) / 0.25)


@pytest.mark.parametrize("seed", [5, 6, 7])
def test_pro_matches_brute_force(seed):
    maps, masks = _blobs(seed)
    assert pro_score(maps, masks) == pytest.approx(brute_pro(maps, masks), abs=1e-10)
    assert pro_score(maps, masks, 0.1) == pytest.approx(brute_pro(maps, masks, 0.1), abs=1e-10)
    assert pro_score(maps, masks, 1.0) == pytest.approx(brute_pro(maps, masks, 1.0), abs=1e-10)
    # the quantile grid approximates the exact value
    approx = pro_score(maps, masks, num_thresholds=2000)
    assert approx == pytest.approx(pro_score(maps, masks), abs=0.02)


def test_pro_curve_monotone_endpoints():
    maps, masks = _blobs(8)
    for nt in (None, 50):
        fpr, pro = pro_curve(maps, masks, num_thresholds=nt)
        assert fpr[0] == 0 and pro[0] == 0 and fpr[-1] == 1 and pro[-1] == 1
        assert np.all(np.diff(fpr) >= 0) and np.all(np.diff(pro) >= -1e-12)


def test_pro_weights_regions_equally_unlike_pixel_recall():
    masks = np.zeros((1, 20, 20), bool)
    masks[0, 1:3, 1:3] = True  # tiny region, 4 px
    masks[0, 8:18, 8:18] = True  # big region, 100 px
    tiny_found = np.zeros((1, 20, 20), np.float32)
    tiny_found[0, 1:3, 1:3] = 1.0
    big_found = np.zeros((1, 20, 20), np.float32)
    big_found[0, 8:18, 8:18] = 1.0
    # finding either region alone gives the same PRO (0.5 at FPR 0 in both)
    assert pro_score(tiny_found, masks) == pytest.approx(pro_score(big_found, masks))
    assert pro_score(tiny_found, masks) == pytest.approx((0.5 + 0.5 + 0.5 * 0.3) / 2)
    # while pixel-level recall / AUROC differ a lot
    assert (tiny_found[masks] > 0).mean() == pytest.approx(4 / 104)
    assert (big_found[masks] > 0).mean() == pytest.approx(100 / 104)
    assert pixel_auroc(big_found, masks) > pixel_auroc(tiny_found, masks) + 0.4


def test_pro_connectivity_is_eight():
    masks = np.zeros((1, 6, 6), bool)
    masks[0, 0, 0] = True  # touches the L-shaped block only diagonally
    masks[0, 1, 1] = masks[0, 1, 2] = masks[0, 2, 1] = True
    maps = np.zeros((1, 6, 6), np.float32)
    maps[0, 0, 0] = 1.0
    # 8-connected: one region of 4 px, 1/4 found; 4-connected: two regions, mean(1, 0) = 1/2
    assert pro_curve(maps, masks)[1][1] == pytest.approx(0.25)
    assert pro_curve(maps, masks, connectivity=4)[1][1] == pytest.approx(0.5)


def test_pro_good_images_add_only_normals():
    maps, masks = _blobs(9)
    # a good image (empty mask) adds normal pixels only; far below everything, it leaves
    # the curve up to FPR 0.3 unchanged apart from rescaling the FPR axis
    good = np.full((1, *maps.shape[1:]), -10.0, np.float32)
    m2, k2 = np.concatenate([maps, good]), np.concatenate([masks, np.zeros_like(good, bool)])
    assert pro_score(m2, k2) == pytest.approx(brute_pro(m2, k2), abs=1e-10)


def test_pro_errors():
    maps = np.zeros((2, 5, 5), np.float32)
    with pytest.raises(ValueError, match="defect region"):
        pro_score(maps, np.zeros((2, 5, 5), bool))
    with pytest.raises(ValueError, match="max_fpr"):
        pro_score(maps, np.ones((2, 5, 5), bool), max_fpr=0)
    with pytest.raises(ValueError, match="normal"):
        pro_score(maps, np.ones((2, 5, 5), bool))
    with pytest.raises(ValueError, match="shape"):
        pro_score(maps, np.ones((2, 5, 4), bool))


# ---------------------------------------------------------------- pixel_metrics


def test_pixel_metrics():
    maps, masks = _blobs(10)
    m = pixel_metrics(maps, masks)
    assert set(m) == {"pixel_auroc", "pro"}
    assert m["pixel_auroc"] == pytest.approx(roc_auc_score(masks.ravel(), maps.ravel()))
    assert m["pro"] == pytest.approx(brute_pro(maps, masks))
    assert pixel_metrics(maps, np.zeros_like(masks)) == {"pixel_auroc": None, "pro": None}
