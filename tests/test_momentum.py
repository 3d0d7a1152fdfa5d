"""Momentum encoder, queue, ShuffleBN, SplitBatchNorm, and the forward passes of PCL / InstDisc / SimCLR."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from pcl_bench.methods.instdisc import InstDisc
from pcl_bench.methods.momentum import MomentumContrast
from pcl_bench.methods.pcl import PCL
from pcl_bench.methods.simclr import SimCLR
from pcl_bench.models import SplitBatchNorm, build_encoder
from pcl_bench.train.e_step import ClusterResult

DIM = 8


def tiny_encoder(splits: int = 1) -> nn.Module:
    """conv -> BN (split or plain) -> ReLU -> pool -> linear: (B, 3, 8, 8) -> (B, DIM)."""
    bn = SplitBatchNorm(4, num_splits=splits) if splits > 1 else nn.BatchNorm2d(4)
    return nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), bn, nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                         nn.Linear(4, DIM))


def bn_free_encoder() -> nn.Module:
    """A per-sample function (no BN): (B, 3, 4, 4) -> (B, DIM)."""
    return nn.Sequential(nn.Flatten(), nn.Linear(48, DIM))


def images(b: int, size: int = 8, seed: int = 0) -> torch.Tensor:
    return torch.randn(b, 3, size, size, generator=torch.Generator().manual_seed(seed))


# ---------------------------------------------------------------------------------------------- momentum

@pytest.mark.parametrize("fused", [True, False])
def test_momentum_update_exact_and_bn_buffers_untouched(fused):
    """theta_k <- m theta_k + (1-m) theta_q for every parameter; the key encoder's BN buffers stay its own."""
    model = MomentumContrast(tiny_encoder(), dim=DIM, queue_len=8, momentum=0.9, fused=fused)
    with torch.no_grad():
        for p in model.encoder_q.parameters():
            p.add_(torch.randn_like(p))
        model.encoder_q[1].running_mean.fill_(5.0)
        model.encoder_k[1].running_mean.fill_(-3.0)
        model.encoder_k[1].running_var.fill_(2.0)
    old_k = [p.clone() for p in model.encoder_k.parameters()]
    q = [p.clone() for p in model.encoder_q.parameters()]
    assert any(not torch.equal(a, b) for a, b in zip(old_k, q))
    model.momentum_update()
    for p_k, a, b in zip(model.encoder_k.parameters(), old_k, q):
        torch.testing.assert_close(p_k, 0.9 * a + 0.1 * b, rtol=1e-6, atol=1e-7)
    assert torch.equal(model.encoder_k[1].running_mean, torch.full((4,), -3.0))
    assert torch.equal(model.encoder_k[1].running_var, torch.full((4,), 2.0))
    assert torch.equal(model.encoder_q[1].running_mean, torch.full((4,), 5.0))


def test_fused_momentum_update_equals_the_per_tensor_one():
    """torch._foreach_lerp_ over a ResNet-18's 62 parameter tensors = one lerp_ per tensor, step after step."""
    fused = MomentumContrast(build_encoder("resnet18", dim=DIM, stem="small"), dim=DIM, queue_len=8,
                             momentum=0.99, fused=True)
    plain = copy.deepcopy(fused)
    plain.fused = False
    for step in range(3):
        with torch.no_grad():
            for a, b in zip(fused.encoder_q.parameters(), plain.encoder_q.parameters()):
                a.add_(torch.randn(a.shape, generator=torch.Generator().manual_seed(step)))
                b.copy_(a)
        fused.momentum_update()
        plain.momentum_update()
    for a, b in zip(fused.encoder_k.parameters(), plain.encoder_k.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-7)  # equal up to float rounding (exact on a CPU)


def test_key_encoder_gets_no_gradient():
    """encoder_k has requires_grad False and no .grad after a backward pass; encoder_q gets gradients."""
    model = MomentumContrast(tiny_encoder(), dim=DIM, queue_len=8, momentum=0.9)
    assert all(not p.requires_grad for p in model.encoder_k.parameters())
    _, loss, metrics = model.contrast(images(4), images(4, seed=1))
    loss.backward()
    assert all(p.grad is None for p in model.encoder_k.parameters())
    assert all(p.grad is not None for p in model.encoder_q.parameters())
    assert 0.0 <= metrics["acc_inst"].item() <= 100.0


# ---------------------------------------------------------------------------------------------- queue

def test_enqueue_writes_columns_and_wraps():
    """Keys land in columns [ptr, ptr+B); ptr advances modulo the queue length."""
    model = MomentumContrast(bn_free_encoder(), dim=DIM, queue_len=6)
    initial = model.queue.clone()
    k1 = F.normalize(torch.randn(2, DIM), dim=1)
    model.enqueue(k1)
    torch.testing.assert_close(model.queue[:, 0:2], k1.T)
    torch.testing.assert_close(model.queue[:, 2:], initial[:, 2:])
    assert int(model.queue_ptr) == 2
    model.queue_ptr[0] = 4
    k2 = F.normalize(torch.randn(2, DIM), dim=1)
    model.enqueue(k2)
    torch.testing.assert_close(model.queue[:, 4:6], k2.T)
    torch.testing.assert_close(model.queue[:, 0:2], k1.T)
    assert int(model.queue_ptr) == 0  # (4 + 2) % 6


def test_enqueue_matches_slice_writes_over_many_steps():
    """The device-side pointer writes the same columns as slicing at a host-side pointer (the reference)."""
    model = MomentumContrast(bn_free_encoder(), dim=DIM, queue_len=12)
    reference, ptr = model.queue.clone(), 0
    for step in range(7):
        k = F.normalize(torch.randn(4, DIM, generator=torch.Generator().manual_seed(step)), dim=1)
        model.enqueue(k)
        reference[:, ptr: ptr + 4] = k.T
        ptr = (ptr + 4) % 12
    assert torch.equal(model.queue, reference) and int(model.queue_ptr) == ptr


def test_queue_length_must_be_multiple_of_batch():
    """A queue of 7 columns cannot take batches of 2 keys."""
    model = MomentumContrast(bn_free_encoder(), dim=DIM, queue_len=7)
    with pytest.raises(AssertionError):
        model.enqueue(F.normalize(torch.randn(2, DIM), dim=1))


def test_queue_columns_are_unit_norm():
    """The initial queue has unit columns (normalised along dim 0)."""
    model = MomentumContrast(bn_free_encoder(), dim=DIM, queue_len=16)
    torch.testing.assert_close(model.queue.norm(dim=0), torch.ones(16))


# ---------------------------------------------------------------------------------------------- ShuffleBN

def test_keys_are_unshuffled_eval_mode():
    """keys(x) is normalize(encoder_k(x)) row by row, i.e. the shuffle is undone (BN in eval mode)."""
    torch.manual_seed(0)
    model = MomentumContrast(build_encoder("resnet18", dim=DIM, head="linear", stem="small", bn_splits=2),
                             dim=DIM, queue_len=8)
    model.encoder_k.eval()
    x = images(8)
    torch.testing.assert_close(model.keys(x), F.normalize(model.encoder_k(x), dim=1))


def test_keys_are_unshuffled_per_sample_encoder():
    """With a BN-free encoder keys(x) equals normalize(encoder_k(x)) in train mode too."""
    torch.manual_seed(1)
    model = MomentumContrast(bn_free_encoder(), dim=DIM, queue_len=8)
    x = images(6, size=4)
    torch.testing.assert_close(model.keys(x), F.normalize(model.encoder_k(x), dim=1))


def test_shuffle_changes_split_bn_batches():
    """In train mode with SplitBatchNorm the shuffle really regroups the BN sub-batches."""
    torch.manual_seed(2)
    model = MomentumContrast(tiny_encoder(splits=2), dim=DIM, queue_len=8)
    x = images(8)
    keys = model.keys(x)
    plain = F.normalize(model.encoder_k(x), dim=1)
    assert not torch.allclose(keys, plain, atol=1e-4)


# ---------------------------------------------------------------------------------------------- SplitBatchNorm

def test_split_bn_train_matches_per_split_bn():
    """Train mode, 2 splits: output = BN on each split; running stats = mean of the per-split updates.

    As in the MoCo CIFAR demo (``view(-1, C * s, H, W)``), split j holds the samples j, j + s, j + 2s, ...
    (strided, not contiguous halves); any fixed partition into equal groups emulates s GPUs under ShuffleBN.
    """
    torch.manual_seed(0)
    split = SplitBatchNorm(4, num_splits=2)
    with torch.no_grad():
        split.weight.copy_(torch.randn(4))
        split.bias.copy_(torch.randn(4))
        split.running_mean.copy_(torch.randn(4))
        split.running_var.copy_(torch.rand(4) + 0.5)
    halves = [nn.BatchNorm2d(4), nn.BatchNorm2d(4)]
    for bn in halves:
        bn.load_state_dict(split.state_dict())
    x = torch.randn(8, 4, 3, 3) * 2 + 1
    out = split(x)
    expected = torch.empty_like(x)
    expected[0::2], expected[1::2] = halves[0](x[0::2]), halves[1](x[1::2])
    torch.testing.assert_close(out, expected)
    torch.testing.assert_close(split.running_mean, (halves[0].running_mean + halves[1].running_mean) / 2)
    torch.testing.assert_close(split.running_var, (halves[0].running_var + halves[1].running_var) / 2)
    assert int(split.num_batches_tracked) == 1
    # Per-half statistics differ from whole-batch statistics.
    assert not torch.allclose(out, nn.functional.batch_norm(x, None, None, split.weight, split.bias, True))


def test_split_bn_eval_is_plain_bn():
    """Eval mode: SplitBatchNorm equals BatchNorm2d with the same state."""
    torch.manual_seed(0)
    split = SplitBatchNorm(4, num_splits=2)
    with torch.no_grad():
        split.running_mean.copy_(torch.randn(4))
        split.running_var.copy_(torch.rand(4) + 0.5)
        split.weight.copy_(torch.randn(4))
    plain = nn.BatchNorm2d(4)
    plain.load_state_dict(split.state_dict())
    split.eval()
    plain.eval()
    x = torch.randn(6, 4, 3, 3)  # 6 rows: not even a multiple of the split count matters in eval
    torch.testing.assert_close(split(x), plain(x))


def test_channels_last_step_matches_nchw():
    """A MoCo step of a ResNet with SplitBatchNorm gives the same loss, gradients and running statistics in
    the channels-last layout (--channels-last) as in NCHW."""
    torch.manual_seed(0)
    nchw = MomentumContrast(build_encoder("resnet18", DIM, "mlp", "small", bn_splits=2), DIM, queue_len=16)
    nhwc = copy.deepcopy(nchw).to(memory_format=torch.channels_last)
    assert nhwc.encoder_q.conv1.weight.is_contiguous(memory_format=torch.channels_last)
    im_q, im_k = images(8, 16, seed=1), images(8, 16, seed=2)
    losses = []
    for model, fmt in ((nchw, torch.contiguous_format), (nhwc, torch.channels_last)):
        torch.manual_seed(3)  # the same ShuffleBN permutation
        _, loss, _ = model.contrast(im_q.contiguous(memory_format=fmt), im_k.contiguous(memory_format=fmt))
        loss.backward()
        losses.append(loss)
    torch.testing.assert_close(losses[1], losses[0])
    for (name, a), b in zip(nchw.named_parameters(), nhwc.parameters()):
        if a.grad is not None:  # summation order differs: float32 rounding, about 1e-3 of the norm at most
            assert (b.grad - a.grad).norm() <= 1e-2 * a.grad.norm(), name
    torch.testing.assert_close(nhwc.encoder_k.bn1.running_var, nchw.encoder_k.bn1.running_var)
    torch.testing.assert_close(nhwc.queue, nchw.queue)


# ---------------------------------------------------------------------------------------------- PCL

def clusters() -> ClusterResult:
    """Two granularities over 10 samples; each batch of indices 0..3 uses at most 3 clusters."""
    g = torch.Generator().manual_seed(0)
    im2cluster = [torch.tensor([0, 1, 0, 2, 3, 4, 4, 5, 5, 5]), torch.tensor([6, 6, 6, 1, 0, 2, 3, 4, 5, 7])]
    centroids = [F.normalize(torch.randn(k, DIM, generator=g), dim=1) for k in (6, 8)]
    density = [torch.rand(k, generator=g) * 0.2 + 0.1 for k in (6, 8)]
    return ClusterResult(im2cluster, centroids, density)


def test_pcl_loss_is_instance_plus_mean_proto(monkeypatch):
    """loss = loss_inst + mean over granularities of the ProtoNCE losses; acc_proto in [0, 100]."""
    torch.manual_seed(0)
    model = PCL(tiny_encoder(), dim=DIM, queue_len=8, momentum=0.99, temperature=0.2, proto_negatives=2)
    recorded = []
    original = model.proto_loss.forward

    def spy(*args, **kwargs):
        out = original(*args, **kwargs)
        recorded.append(out[0].detach())
        return out

    monkeypatch.setattr(model.proto_loss, "forward", spy)
    out = model([images(4), images(4, seed=1)], torch.tensor([0, 1, 2, 3]), clusters())
    assert len(recorded) == 2
    mean_proto = (recorded[0] + recorded[1]) / 2
    assert out["loss_proto"].item() == pytest.approx(mean_proto.item(), rel=1e-6)
    assert out["loss"].item() == pytest.approx(out["loss_inst"].item() + mean_proto.item(), rel=1e-6)
    assert 0.0 <= out["acc_proto"].item() <= 100.0
    assert out["loss"].requires_grad
    out["loss"].backward()


def test_pcl_without_clusters_is_instance_only():
    """During warm-up (no clusters) the loss is the InfoNCE term alone and there is no proto entry."""
    torch.manual_seed(0)
    model = PCL(tiny_encoder(), dim=DIM, queue_len=8, momentum=0.99, temperature=0.2, proto_negatives=2)
    out = model([images(4), images(4, seed=1)], torch.tensor([0, 1, 2, 3]))
    assert "loss_proto" not in out and "acc_proto" not in out
    assert out["loss"].item() == out["loss_inst"].item()


def test_pcl_instance_loss_is_infonce_against_old_queue():
    """loss_inst is InfoNCE(q, k, queue before this step) with tau; then the keys are enqueued."""
    torch.manual_seed(0)
    model = PCL(bn_free_encoder(), dim=DIM, queue_len=8, momentum=0.0, temperature=0.2, proto_negatives=2)
    queue = model.queue.clone()
    xq, xk = images(4, size=4), images(4, size=4, seed=1)
    out = model([xq, xk], torch.tensor([0, 1, 2, 3]))
    q = F.normalize(model.encoder_q(xq), dim=1)
    k = F.normalize(model.encoder_k(xk), dim=1)  # m = 0: encoder_k is encoder_q
    logits = torch.cat([(q * k).sum(1, keepdim=True), q @ queue], dim=1) / 0.2
    expected = -(logits[:, 0] - logits.logsumexp(dim=1)).mean()
    assert out["loss_inst"].item() == pytest.approx(expected.item(), rel=1e-5)
    torch.testing.assert_close(model.queue[:, :4], k.T)
    assert int(model.queue_ptr) == 4


# ---------------------------------------------------------------------------------------------- InstDisc, SimCLR

def test_instdisc_memory_update():
    """v_i <- normalize(0.5 v_i + 0.5 q_i) at the batch's indices only; the other rows are unchanged."""
    torch.manual_seed(0)
    model = InstDisc(bn_free_encoder(), num_samples=6, dim=DIM, negatives=4, temperature=0.07)
    before = model.memory.clone()
    x = images(2, size=4)
    index = torch.tensor([1, 4])
    out = model([x], index)
    q = F.normalize(model.encoder_q(x), dim=1).detach()
    expected = before.clone()
    expected[index] = F.normalize(0.5 * before[index] + 0.5 * q, dim=1)
    torch.testing.assert_close(model.memory, expected)
    assert torch.isfinite(out["loss"])


def test_simclr_forward():
    """SimCLR returns a finite loss equal to NT-Xent of the normalised views, and acc in [0, 100]."""
    torch.manual_seed(0)
    model = SimCLR(bn_free_encoder(), temperature=0.5)
    v1, v2 = images(4, size=4), images(4, size=4, seed=1)
    out = model([v1, v2], torch.arange(4))
    assert torch.isfinite(out["loss"]) and 0.0 <= out["acc_inst"].item() <= 100.0
    z1, z2 = (F.normalize(model.encoder_q(v), dim=1) for v in (v1, v2))
    expected, _, _ = copy.deepcopy(model.loss_fn)(z1, z2)
    assert out["loss"].item() == pytest.approx(expected.item(), rel=1e-6)
