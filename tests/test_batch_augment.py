"""--aug-backend tensor: each batched op equals its torchvision counterpart, and whole views are distributed as
the PIL pipeline's are."""
import numpy as np
import pytest
import torch
import torchvision.transforms.functional as TF
from PIL import Image
from scipy.ndimage import gaussian_filter
from torchvision import transforms as T

from pcl_bench.data.augment import pretrain_transform
from pcl_bench.data.batch_augment import (
    BatchAugment,
    _blend,
    crop_boxes,
    gaussian_blur,
    grayscale,
    resized_crops,
    shift_hue,
)


@pytest.fixture
def rgb():
    torch.manual_seed(0)
    return torch.rand(4, 3, 9, 7)


def test_colour_ops_match_torchvision(rgb):
    shifts = torch.tensor([-0.45, -0.1, 0.05, 0.3])
    hue = torch.stack([TF.adjust_hue(rgb[i], float(shifts[i])) for i in range(4)])
    assert torch.allclose(shift_hue(rgb, shifts), hue, atol=1e-5)
    f = torch.tensor([0.6, 0.9, 1.1, 1.4])
    pairs = [(TF.adjust_brightness, torch.zeros_like(rgb)),
             (TF.adjust_contrast, grayscale(rgb).mean(dim=(1, 2, 3), keepdim=True)),
             (TF.adjust_saturation, grayscale(rgb))]
    for fn, other in pairs:
        ref = torch.stack([fn(rgb[i], float(f[i])) for i in range(4)])
        assert torch.allclose(_blend(rgb, other, f), ref, atol=2e-4), fn.__name__
    assert torch.allclose(grayscale(rgb), TF.rgb_to_grayscale(rgb), atol=2e-4)  # torchvision: 0.2989 R, PIL: 0.299 R


def test_blur_is_a_gaussian_per_image(rgb):
    sigma = torch.tensor([0.3, 0.8, 1.0, 0.5])
    out = gaussian_blur(rgb, sigma)
    radius = 3  # ceil(3 * max sigma)
    for i in range(4):
        ref = gaussian_filter(rgb[i].numpy(), (0, float(sigma[i]), float(sigma[i])), mode="nearest", radius=radius)
        np.testing.assert_allclose(out[i].numpy(), ref, atol=1e-5)


def test_crop_boxes_follow_random_resized_crop():
    torch.manual_seed(0)
    n, h, w = 20000, 48, 64
    boxes = crop_boxes(n, h, w, 0.2, torch.device("cpu"))
    bw, bh = boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]
    assert (boxes[:, :2] >= 0).all() and (boxes[:, 2] <= w).all() and (boxes[:, 3] <= h).all()
    ref = torch.tensor([T.RandomResizedCrop.get_params(torch.empty(1, h, w), (0.2, 1.0), (3 / 4, 4 / 3))
                        for _ in range(n)], dtype=torch.float)  # rows (top, left, height, width)
    for mine, theirs in [(bw, ref[:, 3]), (bh, ref[:, 2]), (boxes[:, 0], ref[:, 1]), (boxes[:, 1], ref[:, 0])]:
        assert abs(mine.mean() - theirs.mean()) < 0.4 and abs(mine.std() - theirs.std()) < 0.4


def test_crop_falls_back_like_torchvision():
    """An image too elongated for any try: the central crop of the nearest allowed ratio."""
    box = crop_boxes(3, 4, 64, 0.2, torch.device("cpu"))
    top, left, height, width = T.RandomResizedCrop.get_params(torch.empty(1, 4, 64), (0.2, 1.0), (3 / 4, 4 / 3))
    assert box.tolist() == [[left, top, left + width, top + height]] * 3


def test_resized_crop_of_the_whole_image_averages_pixels():
    img = torch.randint(0, 256, (2, 3, 8, 8), dtype=torch.uint8)
    out = resized_crops(img, torch.tensor([[0.0, 0, 8, 8]] * 2), 4)
    assert torch.allclose(out, torch.nn.functional.avg_pool2d(img.float() / 255, 2), atol=1e-6)


@pytest.mark.parametrize("kind", ["v1", "v2"])
def test_views_are_distributed_like_the_pil_pipeline(kind):
    rng = np.random.default_rng(0)
    img = np.zeros((32, 32, 3), np.uint8)
    img[:] = rng.integers(0, 256, 3)
    img[8:24, 10:20] = rng.integers(0, 256, 3)
    n = 3000
    torch.manual_seed(0)
    batch = BatchAugment(kind, 16)(torch.from_numpy(img).permute(2, 0, 1)[None].expand(n, -1, -1, -1))
    pil = pretrain_transform(kind, 16)
    ref = torch.stack([pil(Image.fromarray(img)) for _ in range(n)])
    assert batch.shape == ref.shape == (n, 3, 16, 16) and batch.dtype == torch.float32
    assert torch.allclose(batch.mean(dim=(0, 2, 3)), ref.mean(dim=(0, 2, 3)), atol=0.05)
    assert torch.allclose(batch.std(dim=(0, 2, 3)), ref.std(dim=(0, 2, 3)), rtol=0.05)
    assert (batch.mean(dim=0) - ref.mean(dim=0)).abs().mean() < 0.05  # where the bright rectangle lands


def test_views_are_seeded_and_independent():
    img = torch.randint(0, 256, (8, 3, 32, 32), dtype=torch.uint8)
    aug = BatchAugment("v2", 16)
    torch.manual_seed(1)
    a, b = aug(img), aug(img)
    torch.manual_seed(1)
    assert torch.equal(aug(img), a) and not torch.equal(a, b)
