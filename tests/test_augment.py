"""The augmentations are the reference pipelines at 224 px and scale documentedly at small sizes."""
import pytest
import torch
from PIL import Image
from torchvision import transforms as T

from pcl_bench.data.augment import GaussianBlur, TwoCropsTransform, eval_transform, pretrain_transform
from pcl_bench.runtime.errors import UsageError


def kinds(pipeline):
    return [type(t).__name__ if not isinstance(t, T.RandomApply) else f"RandomApply[{type(t.transforms[0]).__name__}]"
            for t in pipeline.transforms]


def test_v1_is_the_moco_v1_pipeline():
    p = pretrain_transform("v1")
    assert kinds(p) == ["RandomResizedCrop", "RandomGrayscale", "ColorJitter", "RandomHorizontalFlip",
                        "ToTensor", "Normalize"]
    crop, gray, jitter = p.transforms[:3]
    assert crop.size == (224, 224) and crop.scale == (0.2, 1.0) and gray.p == 0.2
    assert (jitter.brightness, jitter.contrast, jitter.saturation, jitter.hue) == ((0.6, 1.4),) * 3 + ((-0.4, 0.4),)


def test_v2_is_aug_plus_with_blur():
    p = pretrain_transform("v2")
    assert kinds(p) == ["RandomResizedCrop", "RandomApply[ColorJitter]", "RandomGrayscale", "RandomApply[GaussianBlur]",
                        "RandomHorizontalFlip", "ToTensor", "Normalize"]
    jitter, blur = p.transforms[1], p.transforms[3]
    assert jitter.p == 0.8 and jitter.transforms[0].hue == (-0.1, 0.1)
    assert blur.p == 0.5 and blur.transforms[0].sigma == (0.1, 2.0)


def test_small_images_scale_crop_and_blur():
    p = pretrain_transform("v2", size=32)
    assert p.transforms[0].size == (32, 32)
    lo, hi = p.transforms[3].transforms[0].sigma
    assert abs(lo - 0.1 * 32 / 224) < 1e-12 and abs(hi - 2.0 * 32 / 224) < 1e-12
    e = eval_transform(32)
    assert e.transforms[0].size == 37 and e.transforms[1].size == (32, 32)  # the reference's 256/224 ratio


def test_two_crops_are_independent_views():
    img = Image.fromarray((torch.rand(64, 64, 3) * 255).byte().numpy())
    q, k = TwoCropsTransform(pretrain_transform("v2", 64))(img)
    assert q.shape == k.shape == (3, 64, 64) and not torch.equal(q, k)
    assert eval_transform(64)(img).shape == (3, 64, 64)
    assert GaussianBlur((0.5, 0.5))(img).size == (64, 64)


def test_crop_min_scale_flag():
    """--crop-min-scale replaces only the smallest crop area; 0.2 (the default) is the reference."""
    assert pretrain_transform("v2", 32).transforms[0].scale == (0.2, 1.0)
    assert pretrain_transform("v1", 32, min_scale=0.6).transforms[0].scale == (0.6, 1.0)
    with pytest.raises(UsageError, match="--crop-min-scale"):
        pretrain_transform("v2", 32, min_scale=0.0)
