"""Load the ResNet backbone of any supported checkpoint, checking that every backbone weight was found.

Three formats are recognised by where ``conv1.weight`` sits in the state_dict:

- ``pcl-bench``: ``{"state_dict": {"encoder_q.conv1.weight", ...}, "config": {...}}`` (``pretrain.py``);
- ``moco``: released MoCo / PCL checkpoints, ``{"state_dict": {"module.encoder_q.conv1.weight", ...}}``;
- ``torchvision``: a bare ResNet state_dict, ``{"conv1.weight", ..., "fc.weight"}`` (e.g. supervised weights).

The reference evaluation scripts load with ``strict=False`` and so silently evaluate a random network when
the key format differs; here every backbone weight and BN buffer must be present with
the right shape. The projection / classification head (``fc``) is always dropped.
"""
from __future__ import annotations

import hashlib
import os
import pickle
import re
import zipfile
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torchvision.models import ResNet

from ..runtime.atomic import save_torch
from ..runtime.errors import UsageError
from .encoders import build_encoder

# Searched in this order; "" (no prefix) last, since every state_dict "starts with" it.
KINDS = {"module.encoder_q.": "moco", "encoder_q.": "pcl-bench", "": "torchvision"}
DEFAULT_METHOD = {"moco": "moco/pcl (released)", "torchvision": "supervised"}
# (bottleneck blocks?, blocks in layer1..4) -> arch
LAYOUTS = {(False, (2, 2, 2, 2)): "resnet18", (False, (3, 4, 6, 3)): "resnet34",
           (True, (3, 4, 6, 3)): "resnet50"}
ARCH_NAMES = {"resnet18": "ResNet-18", "resnet34": "ResNet-34", "resnet50": "ResNet-50"}


def file_sha256(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    """Hex sha256 of a file's bytes, read ``chunk`` bytes at a time."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def check_crc(path: str | os.PathLike) -> None:
    """Raise ValueError if a record of zip checkpoint ``path`` fails its CRC-32: torch.save stores one per
    record, but torch.load does not check them and would load flipped bytes as weights. Files of the legacy
    (torch < 1.6, non-zip) format have no checksums and pass."""
    if zipfile.is_zipfile(path):
        with zipfile.ZipFile(path) as z:
            if (bad := z.testzip()) is not None:
                raise ValueError(f"record {bad} fails its CRC-32 check")


def read_checkpoint(path: str | os.PathLike) -> dict[str, Any]:
    """The checkpoint's top-level dict, with the state_dict under ``"state_dict"`` in every format.

    Loaded with ``weights_only=True``: a downloaded checkpoint cannot run code.
    """
    if not Path(path).is_file():
        raise UsageError(f"checkpoint {path}: no such file; pass the path of a .pt/.pth checkpoint")
    try:
        check_crc(path)
    except (ValueError, zipfile.BadZipFile) as e:
        raise UsageError(f"checkpoint {path} is damaged ({e}); restore it from a copy") from None
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        if "Unsupported global" not in str(e):  # garbage bytes fail on an opcode instead
            raise UsageError(f"checkpoint {path} is not a PyTorch checkpoint (unreadable pickle); "
                             f"pass a file written by torch.save") from None
        raise UsageError(f"checkpoint {path} holds Python objects other than tensors and plain containers, "
                         f"which are not loaded for safety; re-save just its state_dict") from None
    except Exception as e:  # noqa: BLE001  (KeyError, EOFError, RuntimeError, ... for other files)
        raise UsageError(f"checkpoint {path} is not a PyTorch checkpoint ({type(e).__name__}); "
                         f"pass a file written by torch.save") from None
    if isinstance(obj, dict) and isinstance(obj.get("state_dict"), dict):
        return obj
    if isinstance(obj, dict) and obj and all(isinstance(v, torch.Tensor) for v in obj.values()):
        return {"state_dict": obj}
    raise UsageError(f"checkpoint {path} holds neither a state_dict nor a dict with a 'state_dict' entry")


def detect_prefix(state_dict: dict[str, torch.Tensor]) -> str | None:
    """The key prefix of the backbone (``"module.encoder_q."``, ``"encoder_q."`` or ``""``), or None."""
    return next((p for p in KINDS if f"{p}conv1.weight" in state_dict), None)


def infer_arch(backbone: dict[str, torch.Tensor]) -> str | None:
    """resnet18/34/50 from the block layout of an un-prefixed backbone state_dict, or None if unknown."""
    blocks = []
    for layer in range(1, 5):
        found = {int(m.group(1)) for k in backbone if (m := re.match(rf"layer{layer}\.(\d+)\.", k))}
        blocks.append(len(found))
    return LAYOUTS.get(("layer1.0.conv3.weight" in backbone, tuple(blocks)))


def infer_stem(backbone: dict[str, torch.Tensor]) -> str:
    """``"small"`` for a 3x3 conv1, ``"imagenet"`` for the 7x7 one (also when conv1 is absent)."""
    conv1 = backbone.get("conv1.weight")
    return "small" if conv1 is not None and conv1.shape[-1] == 3 else "imagenet"


def check_complete(net: nn.Module, backbone: dict[str, torch.Tensor], path, arch: str) -> None:
    """Raise UsageError unless ``backbone`` has every weight and BN buffer of ``net`` with its shape."""
    expected = {k: v.shape for k, v in net.state_dict().items() if not k.endswith("num_batches_tracked")}
    missing = [k for k in expected if k not in backbone]
    if missing:
        raise UsageError(f"checkpoint {path} has no {ARCH_NAMES[arch]} backbone: {len(missing)} of "
                         f"{len(expected)} weights missing, e.g. {', '.join(missing[:3])}")
    wrong = [k for k, shape in expected.items() if backbone[k].shape != shape]
    if wrong:
        k = wrong[0]
        raise UsageError(f"checkpoint {path}: {len(wrong)} {ARCH_NAMES[arch]} weights have the wrong shape, "
                         f"e.g. {k} is {tuple(backbone[k].shape)}, expected {tuple(expected[k])}")


def load_backbone(path: str | os.PathLike, arch: str | None = None) -> tuple[ResNet, dict[str, Any]]:
    """The checkpoint's backbone as a torchvision ResNet with ``fc = Identity`` in eval mode, on CPU.

    ``arch`` (resnet18/34/50) is inferred from the block layout when None; if given it must match.
    The stem (``imagenet`` 7x7 or ``small`` 3x3 conv1) is always inferred.
    Returns (net, info) with info = {path, sha256 (hex of the file bytes), kind (pcl-bench|moco|torchvision),
    arch, stem, method}. The network maps (N, 3, H, W) to the pooled feature (N, 512 or 2048).
    """
    ckpt = read_checkpoint(path)
    state = ckpt["state_dict"]
    prefix = detect_prefix(state)
    if prefix is None and arch is None:
        raise UsageError(f"checkpoint {path} has no ResNet backbone: no conv1.weight under "
                         f"{', '.join(p for p in KINDS if p)} or at the top level")
    prefix = prefix or ""
    backbone = {k[len(prefix):]: v for k, v in state.items()
                if k.startswith(prefix) and not k[len(prefix):].startswith("fc.")}
    found = infer_arch(backbone)
    if arch is not None and found is not None and found != arch:
        raise UsageError(f"checkpoint {path} holds a {found} backbone, not the requested {arch}; "
                         f"pass --arch {found} or omit --arch")
    arch = arch or found
    if arch is None:
        raise UsageError(f"checkpoint {path}: its backbone is not a ResNet-18, -34 or -50 "
                         f"(blocks per stage do not match); only these are supported")
    stem = infer_stem(backbone)
    net = build_encoder(arch, stem=stem)
    net.fc = nn.Identity()
    check_complete(net, backbone, path, arch)
    net.load_state_dict(backbone, strict=False)  # complete by check_complete; only num_batches_tracked may lack
    kind = KINDS[prefix]
    config = ckpt.get("config") if isinstance(ckpt.get("config"), dict) else {}
    method = config.get("method") or ckpt.get("method") or DEFAULT_METHOD.get(kind, "unknown")
    info = {"path": str(path), "sha256": file_sha256(path), "kind": kind, "arch": arch, "stem": stem,
            "method": method}
    return net.eval(), info


def export_torchvision(path: str | os.PathLike, out_path: str | os.PathLike) -> dict[str, Any]:
    """Write the backbone of checkpoint ``path`` to ``out_path`` as a bare torchvision state_dict, no ``fc``.

    It loads with ``strict=True`` into a torchvision ResNet whose ``fc`` is ``nn.Identity()`` (for a
    ``small``-stem backbone, after the same conv1 / maxpool replacement as ``build_encoder``).
    Written atomically; returns the info of :func:`load_backbone`.
    """
    net, info = load_backbone(path)
    save_torch(net.state_dict(), out_path)
    return info
