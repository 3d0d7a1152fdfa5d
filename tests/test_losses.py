"""InfoNCE, ProtoNCE and NT-Xent on hand-computed examples (``pcl_reference.md`` §1.7, §2.2-2.3)."""

from __future__ import annotations

import math

import pytest
import torch

from pcl_bench.losses import InfoNCE, NTXent, ProtoNCE

# ---------------------------------------------------------------------------------------------- InfoNCE


def test_infonce_hand_example():
    """InfoNCE loss and logits (positive in column 0, /tau) match a hand computation."""
    q = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    k = torch.tensor([[0.6, 0.8], [0.0, 1.0]])
    queue = torch.tensor([[1.0, 0.0, 0.6], [0.0, 1.0, -0.8]])  # (D=2, R=3), unit columns
    loss, logits = InfoNCE(temperature=0.5)(q, k, queue)
    # row 0: q.k = 0.6, q.n = (1, 0, 0.6)  -> /0.5 -> 1.2 | 2, 0, 1.2
    # row 1: q.k = 1.0, q.n = (0, 1, -0.8) -> /0.5 -> 2.0 | 0, 2, -1.6
    torch.testing.assert_close(logits, torch.tensor([[1.2, 2.0, 0.0, 1.2], [2.0, 0.0, 2.0, -1.6]]))
    l0 = -math.log(math.exp(1.2) / (math.exp(1.2) + math.exp(2.0) + math.exp(0.0) + math.exp(1.2)))
    l1 = -math.log(math.exp(2.0) / (math.exp(2.0) + math.exp(0.0) + math.exp(2.0) + math.exp(-1.6)))
    assert loss.item() == pytest.approx((l0 + l1) / 2, rel=1e-6)


# ---------------------------------------------------------------------------------------------- ProtoNCE
# Six unit prototypes at 60 degree steps, q0 = e_x and q1 = e_y, so q_i . c_j is cos / sin of j * 60 deg and
# every prototype gives a distinct logit column.
K = 6
PROTOS = torch.tensor([[math.cos(j * math.pi / 3), math.sin(j * math.pi / 3)] for j in range(K)])
PHI = torch.tensor([0.1, 0.2, 0.3, 0.4, 0.5, 0.6])
Q = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
# Dataset of 4 samples. Cluster 5 is assigned to nobody: max(im2cluster) = 4 < k - 1.
IM2CLUSTER = torch.tensor([1, 4, 1, 0])


def qc(i: int, j: int) -> float:
    """q_i . c_j by hand."""
    angle = j * math.pi / 3
    return math.cos(angle) if i == 0 else math.sin(angle)


def column_ids(logits: torch.Tensor, phi: torch.Tensor) -> list[int]:
    """Recover which prototype each logit column holds (columns are unique by construction)."""
    ids = []
    for col in logits.T:
        match = [j for j in range(K)
                 if abs(col[0].item() - qc(0, j) / phi[j].item()) < 1e-5
                 and abs(col[1].item() - qc(1, j) / phi[j].item()) < 1e-5]
        assert len(match) == 1, f"column {col.tolist()} matches prototypes {match}"
        ids.append(match[0])
    return ids


def hand_proto_loss(ids: list[int], phi: list[float]) -> float:
    """-1/B sum_i log( exp(q_i.c_{ids[i]}/phi) / sum_j exp(q_i.c_{ids[j]}/phi_j) ), B = 2."""
    total = 0.0
    for i in range(2):
        terms = [math.exp(qc(i, j) / phi[j]) for j in ids]
        total += -math.log(terms[i] / sum(terms))
    return total / 2


def proto(index, r=2, phi=PHI, seed=0):
    gen = torch.Generator().manual_seed(seed)
    return ProtoNCE(num_negatives=r)(Q, torch.tensor(index), IM2CLUSTER, PROTOS, phi, generator=gen)


def test_protonce_layout_and_hand_loss():
    """Positives of row i in column i, r free negatives after them, loss equals the hand formula."""
    loss, logits = proto([0, 1])  # clusters 1 and 4
    assert logits.shape == (2, 2 + 2)
    ids = column_ids(logits, PHI)
    assert ids[:2] == [1, 4]
    assert set(ids[2:]) <= {0, 2, 3, 5} and len(set(ids[2:])) == 2
    # Each row's other in-batch positive is a negative for it: row 0 sees c_4/phi_4, row 1 sees c_1/phi_1.
    assert logits[0, 1].item() == pytest.approx(qc(0, 4) / 0.5, rel=1e-6)
    assert logits[1, 0].item() == pytest.approx(qc(1, 1) / 0.2, rel=1e-6)
    assert loss.item() == pytest.approx(hand_proto_loss(ids, PHI.tolist()), rel=1e-5)


def test_protonce_each_column_divided_by_its_own_phi():
    """Same draw with phi = 1 and with phi: column j of the latter is the former divided by phi_{id_j}."""
    _, plain = proto([0, 1], phi=torch.ones(K), seed=3)
    _, scaled = proto([0, 1], phi=PHI, seed=3)
    ids = column_ids(plain, torch.ones(K))
    torch.testing.assert_close(scaled, plain / PHI[ids])


def test_protonce_shared_cluster_duplicates_positive():
    """Two samples of cluster 1: both columns 0 and 1 are c_1/phi_1, the duplicate is a negative of each row."""
    loss, logits = proto([0, 2])
    ids = column_ids(logits, PHI)
    assert ids[:2] == [1, 1]
    torch.testing.assert_close(logits[:, 0], logits[:, 1])
    assert 1 not in ids[2:]
    # Row 0: exp(a)/(2 exp(a) + negatives), a = q0.c1/phi1 = 0.5/0.2 = 2.5.
    a = 0.5 / 0.2
    negs0 = sum(math.exp(qc(0, j) / PHI[j].item()) for j in ids[2:])
    negs1 = sum(math.exp(qc(1, j) / PHI[j].item()) for j in ids[2:])
    b = qc(1, 1) / 0.2
    expected = (-math.log(math.exp(a) / (2 * math.exp(a) + negs0))
                - math.log(math.exp(b) / (2 * math.exp(b) + negs1))) / 2
    assert loss.item() == pytest.approx(expected, rel=1e-5)


def test_protonce_samples_every_free_cluster_and_never_a_batch_cluster():
    """Over many draws the negatives cover all free clusters, including the empty largest id k-1."""
    gen = torch.Generator().manual_seed(0)
    loss_fn = ProtoNCE(num_negatives=2)
    seen: set[int] = set()
    for _ in range(100):
        _, logits = loss_fn(Q, torch.tensor([0, 1]), IM2CLUSTER, PROTOS, PHI, generator=gen)
        ids = column_ids(logits, PHI)
        assert not set(ids[2:]) & {1, 4}
        assert len(set(ids[2:])) == 2  # without replacement
        seen |= set(ids[2:])
    assert seen == {0, 2, 3, 5}  # 5 = k - 1 is never assigned, so the reference's 0..max() would miss it


def test_protonce_too_few_free_clusters():
    """r larger than the number of clusters absent from the batch is a ValueError."""
    with pytest.raises(ValueError):
        proto([0, 1], r=5)  # only 0, 2, 3, 5 are free
    proto([0, 1], r=4)  # exactly enough is fine


# ---------------------------------------------------------------------------------------------- NT-Xent
Z1 = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
Z2 = torch.tensor([[0.6, 0.8], [0.8, -0.6]])


def test_ntxent_hand_example():
    """NT-Xent with B = 2, tau = 1: self-similarity excluded, positives = other view, hand-computed loss."""
    loss, logits, targets = NTXent(temperature=1.0)(Z1, Z2)
    # Views a0 = (1, 0), a1 = (0, 1), a2 = (.6, .8), a3 = (.8, -.6); pairs (0, 2) and (1, 3).
    # Dot products: a0.a1 = 0, a0.a2 = .6, a0.a3 = .8, a1.a2 = .8, a1.a3 = -.6, a2.a3 = 0.
    assert targets.tolist() == [2, 3, 0, 1]
    assert torch.isinf(logits.diagonal()).all() and (logits.diagonal() < 0).all()
    e = math.exp
    l0 = -0.6 + math.log(e(0.0) + e(0.6) + e(0.8))
    l1 = 0.6 + math.log(e(0.0) + e(0.8) + e(-0.6))
    l2 = -0.6 + math.log(e(0.6) + e(0.8) + e(0.0))
    l3 = 0.6 + math.log(e(0.8) + e(-0.6) + e(0.0))
    assert loss.item() == pytest.approx((l0 + l1 + l2 + l3) / 4, rel=1e-6)


def test_ntxent_gathered_equals_local():
    """Passing the local views as the gathered ones at offset 0 gives the local loss."""
    loss_fn = NTXent(temperature=0.5)
    local, _, _ = loss_fn(Z1, Z2)
    gathered, _, _ = loss_fn(Z1, Z2, Z1.clone(), Z2.clone(), offset=0)
    assert gathered.item() == pytest.approx(local.item(), rel=1e-6)


def test_ntxent_offset_two_ranks():
    """Two simulated ranks (offset 0 and B): the mean of their losses is the loss of the whole batch."""
    g = torch.Generator().manual_seed(0)
    z1 = torch.nn.functional.normalize(torch.randn(4, 3, generator=g), dim=1)
    z2 = torch.nn.functional.normalize(torch.randn(4, 3, generator=g), dim=1)
    loss_fn = NTXent(temperature=0.3)
    whole, _, _ = loss_fn(z1, z2)
    rank0, _, t0 = loss_fn(z1[:2], z2[:2], z1, z2, offset=0)
    rank1, logits1, t1 = loss_fn(z1[2:], z2[2:], z1, z2, offset=2)
    assert t0.tolist() == [4, 5, 0, 1]
    assert t1.tolist() == [6, 7, 2, 3]
    own1 = [2, 3, 6, 7]
    assert all(torch.isinf(logits1[r, c]) for r, c in enumerate(own1))
    assert ((rank0 + rank1) / 2).item() == pytest.approx(whole.item(), rel=1e-6)
