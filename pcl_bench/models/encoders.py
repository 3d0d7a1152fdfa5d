"""Encoders: a torchvision ResNet whose ``fc`` is the projection head, as in the MoCo / PCL reference.

Keeping the head in ``fc`` (rather than wrapping the network) gives state_dict keys identical to the
released MoCo and PCL checkpoints (``encoder_q.conv1.weight`` ... ``encoder_q.fc.0.weight``), so every
checkpoint, ours or theirs, loads through one code path.

- ``stem="imagenet"``: the standard 7x7/2 convolution and 3x3/2 max-pool.
- ``stem="small"``: a 3x3/1 convolution and no max-pool, the usual variant for 32 px images (CIFAR).
- ``head="linear"``: fc = Linear(feat, dim) (MoCo v1, PCL v1).
  ``head="mlp"``: fc = Linear(feat, feat) -> ReLU -> Linear(feat, dim) (MoCo v2, PCL v2, SimCLR); no BN.

Two CPU fast paths leave every output unchanged: convolutions with a 1 x 1 output run as one matrix product
(:mod:`.one_pixel`), and the stem's max-pool runs in the channels-last layout (:class:`MaxPool2dNHWC`).
"""
from __future__ import annotations

from functools import partial

import torch
from torch import nn
from torchvision.models import ResNet, resnet18, resnet34, resnet50

from ..runtime.errors import UsageError
from .one_pixel import use_one_pixel
from .split_bn import SplitBatchNorm

ARCHS = {"resnet18": resnet18, "resnet34": resnet34, "resnet50": resnet50}
STEMS = ("imagenet", "small")
HEADS = ("linear", "mlp")


def build_encoder(arch: str = "resnet50", dim: int = 128, head: str = "linear", stem: str = "imagenet",
                  bn_splits: int = 1) -> ResNet:
    """A ResNet mapping (N, 3, H, W) images to (N, dim) embeddings (not normalised).

    ``bn_splits > 1`` replaces every BatchNorm2d with :class:`SplitBatchNorm`.
    """
    if arch not in ARCHS:
        raise UsageError(f"unknown --arch {arch!r}; choose one of {', '.join(ARCHS)}")
    if stem not in STEMS or head not in HEADS:
        raise UsageError(f"--stem must be one of {STEMS} and --head one of {HEADS}")
    norm = partial(SplitBatchNorm, num_splits=bn_splits) if bn_splits > 1 else nn.BatchNorm2d
    net = ARCHS[arch](weights=None, num_classes=dim, norm_layer=norm)
    if stem == "small":
        net.conv1 = nn.Conv2d(3, 64, kernel_size=3, stride=1, padding=1, bias=False)
        net.maxpool = nn.Identity()
    else:
        net.maxpool = MaxPool2dNHWC(kernel_size=3, stride=2, padding=1)
    if head == "mlp":
        feat = net.fc.in_features
        net.fc = nn.Sequential(nn.Linear(feat, feat), nn.ReLU(inplace=True), net.fc)
    return use_one_pixel(net)


class MaxPool2dNHWC(nn.MaxPool2d):
    """``nn.MaxPool2d`` computed in the channels-last layout on CPUs, where PyTorch's NCHW kernel is about
    10x slower (2 ms against 0.15 ms for the 32 px stem at batch 32); the output keeps the input's layout."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.device.type != "cpu" or x.is_contiguous(memory_format=torch.channels_last):
            return super().forward(x)
        return super().forward(x.contiguous(memory_format=torch.channels_last)).contiguous()


def feature_dim(net: ResNet) -> int:
    """Width of the pooled backbone feature (512 for ResNet-18/34, 2048 for ResNet-50)."""
    return net.inplanes  # torchvision leaves the last block's output width here


def backbone_features(net: ResNet, x: torch.Tensor) -> torch.Tensor:
    """Global-average-pooled layer4 output, i.e. the network without its head: (N, 3, H, W) -> (N, feat)."""
    x = net.maxpool(net.relu(net.bn1(net.conv1(x))))
    x = net.layer4(net.layer3(net.layer2(net.layer1(x))))
    return torch.flatten(net.avgpool(x), 1)
