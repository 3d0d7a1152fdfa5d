"""Collapse metrics on embeddings of known rank, and ``pcl-bench analyze collapse`` on a checkpoint."""
import json
import math

import pytest
import torch
import torch.nn.functional as F

from pcl_bench.analysis.collapse import collapse_metrics, effective_rank, mass_rank, spectrum
from pcl_bench.cli import main
from pcl_bench.data import shapes
from pcl_bench.eval.store import read_rows
from pcl_bench.models import build_encoder

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(autouse=True)
def small_shapes(monkeypatch):
    """Small generated `shapes` splits (12 train, 10 test images per class): every run takes seconds."""
    monkeypatch.setitem(shapes.DEFAULT_PER_CLASS, "train", 12)
    monkeypatch.setitem(shapes.DEFAULT_PER_CLASS, "test", 10)


def axes_embeddings(r: int, d: int, copies: int = 3, first: int = 0) -> torch.Tensor:
    """Rows +-e_first .. +-e_{first+r-1} in R^d, `copies` times each: zero mean, r equal-variance axes."""
    eye = torch.eye(d)[first: first + r]
    return torch.cat([eye, -eye]).repeat(copies, 1)


@pytest.mark.parametrize("r, d, rank95", [(4, 16, 4), (12, 16, 12), (20, 32, 19), (1, 8, 1)])
def test_equal_spectrum_of_known_rank(r, d, rank95):
    """r equal singular values: effective rank r, rank95 = ceil(0.95 r), a d - r tail of zeros."""
    z = axes_embeddings(r, d)
    m = collapse_metrics(z * 3.0)  # the embeddings are L2-normalised first: scale is irrelevant
    n = z.shape[0]
    assert m["effective_rank"] == pytest.approx(r, rel=1e-9)
    assert m["rank95"] == rank95 == math.ceil(0.95 * r - 1e-9)
    assert m["total_variance"] == pytest.approx(n / (n - 1), rel=1e-9)  # unbiased trace of the covariance
    s = torch.tensor(m["spectrum"])
    assert torch.allclose(s[:r], torch.full((r,), n / (n - 1) / r)) and s[r:].abs().max() < 1e-12


def test_low_rank_gaussian_and_full_collapse():
    g = torch.Generator().manual_seed(0)
    basis = torch.linalg.qr(torch.randn(64, 5, generator=g, dtype=torch.float64)).Q  # 5-d subspace of R^64
    z = (torch.randn(2000, 5, generator=g, dtype=torch.float64) @ basis.T).float()
    m = collapse_metrics(z)
    assert 4.5 < m["effective_rank"] <= 5.0 and m["rank95"] == 5
    assert max(m["spectrum"][5:]) < 1e-6 * m["spectrum"][0]
    collapsed = collapse_metrics(torch.ones(50, 8) + torch.tensor([1.0] + [0.0] * 7))  # one point, repeated
    assert (collapsed["effective_rank"], collapsed["rank95"], collapsed["total_variance"]) == (0.0, 0, 0.0)


def test_spectrum_from_gram_matches_covariance():
    """With fewer samples than dimensions the n x n Gram path gives the covariance's singular values."""
    z = torch.randn(10, 40, generator=torch.Generator().manual_seed(1))
    direct = torch.linalg.svdvals(torch.cov(F.normalize(z.double(), dim=1).T))
    torch.testing.assert_close(spectrum(z), direct, atol=1e-12, rtol=0)
    eig = spectrum(z)
    assert effective_rank(eig.flip(0)) == pytest.approx(effective_rank(eig)) and mass_rank(eig) <= 9


def test_per_class_rank():
    """Class 0 spans 2 axes, class 1 six others; unlabelled rows (-1) are ignored."""
    z = torch.cat([axes_embeddings(2, 16), axes_embeddings(6, 16, first=2), torch.randn(5, 16)])
    labels = torch.tensor([0] * 12 + [1] * 36 + [-1] * 5)
    m = collapse_metrics(z, labels)
    assert m["rank95_per_class"] == {0: 2, 1: 6} and m["rank95_class_mean"] == 4.0


def test_analyze_collapse_cli(tmp_path, capsys):
    """A pcl-bench checkpoint with an MLP head: metrics printed, PNG + JSON written, 8 store rows appended."""
    torch.manual_seed(0)
    net = build_encoder("resnet18", dim=16, head="mlp")
    ckpt = tmp_path / "last.pt"
    torch.save({"state_dict": {f"encoder_q.{k}": v for k, v in net.state_dict().items()},
                "config": {"method": "clop", "image_size": 32}}, ckpt)
    store = tmp_path / "results" / "store.jsonl"
    assert main(["analyze", "collapse", "--checkpoint", str(ckpt), "--dataset", "shapes",
                 "--results", str(store), "--workers", "0"]) == 0
    out = capsys.readouterr().out
    assert "on shapes test, 100 images at 32 px" in out
    assert "backbone" in out and "projection" in out and "eff.rank" in out
    (png,) = (tmp_path / "results" / "collapse").glob("*.png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    saved = json.loads(png.with_suffix(".json").read_text())["metrics"]
    assert saved["backbone"]["dim"] == 512 and saved["projection"]["dim"] == 16
    assert len(saved["projection"]["rank95_per_class"]) == 10
    rows = read_rows(store)
    assert len(rows) == 8 and set(rows["protocol"]) == {"collapse"}
    assert set(rows["setting"]) == {"backbone", "projection"}
    assert set(rows["metric"]) == {"effective_rank", "rank95", "rank95_class_mean", "total_variance"}
