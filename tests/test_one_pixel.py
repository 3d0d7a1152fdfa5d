"""The CPU fast paths of the encoders: one-pixel convolutions as matrix products and the channels-last max-pool
give the outputs and gradients of the plain torchvision modules."""
from __future__ import annotations

import copy

import pytest
import torch
from torch import nn
from torchvision.models import resnet18

from pcl_bench.models import build_encoder
from pcl_bench.models.encoders import MaxPool2dNHWC
from pcl_bench.models.one_pixel import OnePixelConv2d, use_one_pixel


def outputs_and_grads(module: nn.Module, x: torch.Tensor) -> list[torch.Tensor]:
    x = x.clone().requires_grad_()
    y = module(x)
    y.backward(torch.randn(y.shape, generator=torch.Generator().manual_seed(1)))
    return [y, x.grad, *(p.grad for p in module.parameters())]


def assert_same_as_conv(conv: nn.Conv2d, x: torch.Tensor) -> None:
    fast = use_one_pixel(nn.Sequential(copy.deepcopy(conv)))[0]
    assert type(fast) is OnePixelConv2d
    for got, want in zip(outputs_and_grads(fast, x), outputs_and_grads(conv, x)):
        assert got.shape == want.shape
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)


# (kernel, stride, padding, input size): ResNet's cases at 32 px (3x3 on 1x1, the stride-2 entry conv and shortcut
# on 2x2), odd windows, a 7x7 stem on a tiny image, and maps with several output pixels (the plain path).
CASES = [(3, 1, 1, 1), (3, 2, 1, 1), (3, 2, 1, 2), (1, 2, 0, 2), (1, 1, 0, 1), (3, 1, 0, 3), (3, 3, 0, 4),
         (7, 2, 3, 2), (5, 1, 2, 1), (3, 1, 1, 2), (3, 2, 1, 5), (1, 1, 0, 3)]


@pytest.mark.parametrize("kernel,stride,padding,size", CASES)
@pytest.mark.parametrize("bias", [False, True])
@pytest.mark.parametrize("channels_last", [False, True])
def test_one_pixel_conv_matches_conv2d(kernel, stride, padding, size, bias, channels_last):
    torch.manual_seed(0)
    x = torch.randn(3, 6, size, size)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    assert_same_as_conv(nn.Conv2d(6, 4, kernel, stride=stride, padding=padding, bias=bias), x)


def test_one_pixel_window():
    conv = use_one_pixel(nn.Sequential(nn.Conv2d(2, 2, 3, stride=2, padding=1)))[0]
    assert conv._window(1, 1) == (1, 1)
    assert conv._window(2, 2) == (2, 2)  # the kernel's lower-right 2x2 taps meet the input
    assert conv._window(3, 3) is None  # a 2x2 output
    assert conv._window(2, 3) is None


@pytest.mark.parametrize("conv", [nn.Conv2d(4, 4, 3, padding=1, padding_mode="circular"),
                                  nn.Conv2d(4, 4, 3, padding=1, groups=2), nn.Conv2d(4, 4, 3, padding=2, dilation=2),
                                  nn.Conv2d(4, 4, 3, padding="same")])
def test_other_convolutions_take_the_plain_path(conv):
    """Padding modes, groups, dilation and string padding are left to ``nn.Conv2d``, even on 1x1 inputs."""
    fast = use_one_pixel(nn.Sequential(copy.deepcopy(conv)))[0]
    assert fast._window(1, 1) is None
    x = torch.randn(2, 4, 1, 1)
    torch.testing.assert_close(fast(x), conv(x))


def test_max_pool_nhwc_matches_max_pool():
    x = torch.randn(2, 5, 9, 9)
    pool, fast = nn.MaxPool2d(3, 2, 1), MaxPool2dNHWC(3, 2, 1)
    for got, want in zip(outputs_and_grads(fast, x), outputs_and_grads(pool, x)):
        torch.testing.assert_close(got, want)
    assert fast(x).is_contiguous()
    x_nhwc = x.contiguous(memory_format=torch.channels_last)
    assert fast(x_nhwc).is_contiguous(memory_format=torch.channels_last)


def test_encoder_matches_torchvision_resnet_at_32px():
    """The shapes preset's network (ImageNet stem, 32 px, so layer4 runs on 1x1 maps): the same state_dict keys,
    outputs and gradients as torchvision's ResNet-18 with the same weights."""
    torch.manual_seed(0)
    ours = build_encoder("resnet18", dim=10, head="linear", stem="imagenet")
    reference = resnet18(num_classes=10)
    assert list(ours.state_dict()) == list(reference.state_dict())
    reference.load_state_dict(ours.state_dict())
    x = torch.randn(4, 3, 32, 32)
    got, want = outputs_and_grads(ours, x), outputs_and_grads(reference, x)
    for a, b in zip(got, want):  # float32 summation order differs: compare norms
        assert (a - b).norm() <= 1e-4 * b.norm()
