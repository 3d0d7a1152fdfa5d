"""The pretraining engine end to end on tiny `shapes` runs: CLI, run folder, resume, DDP, errors, E-step flags."""
import copy
import json
import os
import signal
import subprocess
import sys

import pytest
import torch

from pcl_bench.cli import main
from pcl_bench.config import SCALE_PRESETS, resolve, set_world, validate
from pcl_bench.methods import build_method
from pcl_bench.train import engine

# 120 images at 32 px, batch 16: a few seconds per epoch on 2 CPU cores.
TINY = ["--subset-per-class", "12", "--image-size", "32", "--batch-size", "16", "--queue", "32",
        "--num-cluster", "24,32", "--proto-negatives", "8", "--warmup-epochs", "1", "--workers", "0",
        "--bn-splits", "2", "--knn-k", "5"]


def run_cli(tmp_path, *args: str, name: str = "run") -> int:
    return main(["pretrain", *TINY, "--out", str(tmp_path), "--name", name, *args])


def records(run_dir, kind):
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    return [r for r in map(json.loads, lines) if r["kind"] == kind]


def test_cli_end_to_end(tmp_path, capsys):
    """A tiny pcl_v2 run writes every artefact and prints the kNN comparison."""
    assert run_cli(tmp_path, "--method", "pcl_v2", "--epochs", "2", "--save-every", "1", "--channels-last") == 0
    run = tmp_path / "run"
    for name in ("config.json", "last.pt", "checkpoint_0000.pt", "checkpoint_0001.pt", "epochs.csv",
                 "metrics.jsonl", "clusters.pt", "knn.json"):
        assert (run / name).exists(), name
    assert list((run / "tb").iterdir()), "no TensorBoard events"
    config = json.loads((run / "config.json").read_text())
    assert config["method"] == "pcl_v2" and config["provenance"]["version"]
    epochs = records(run, "epoch")
    assert [e["epoch"] for e in epochs] == [0, 1]
    assert "acc_proto" not in epochs[0] and "acc_proto" in epochs[1]  # warm-up epoch has no ProtoNCE
    (cluster,) = records(run, "cluster")
    assert [g["k"] for g in cluster["granularities"]] == [24, 32]
    assert {"ami_fine", "ami_coarse", "size_hist", "phi_mean"} <= set(cluster["granularities"][0])
    ckpt = torch.load(run / "last.pt", weights_only=False)
    assert ckpt["epoch"] == 2 and any(k.startswith("encoder_q.") for k in ckpt["state_dict"])
    assert ckpt["state_dict"]["encoder_q.conv1.weight"].is_contiguous(memory_format=torch.channels_last)
    out = capsys.readouterr().out
    assert "random init" in out and "pcl_v2" in out
    knn = json.loads((run / "knn.json").read_text())["knn"]
    assert set(knn) >= {"random_init", "pcl_v2"}


@pytest.mark.parametrize("method", ["moco", "instdisc", "simclr"])
def test_other_methods_train(tmp_path, method):
    """Every registered baseline runs an epoch through the same engine."""
    assert run_cli(tmp_path, "--method", method, "--epochs", "1", "--no-final-knn") == 0
    (epoch,) = records(tmp_path / "run", "epoch")
    assert epoch["loss"] > 0


def _state(path):
    ckpt = torch.load(path, weights_only=False)
    return ckpt["state_dict"], ckpt["optimizer"]["state"]


@pytest.mark.slow  # the fault-tolerance tests kill at checkpoints, steps and the E-step in the default run
def test_kill_and_resume_is_exact(tmp_path):
    """SIGKILL during epoch 3, then --resume: final weights, queue and optimizer equal an uninterrupted run."""
    args = ["--method", "pcl_v2", "--epochs", "3", "--no-final-knn"]
    assert run_cli(tmp_path, *args, name="straight") == 0

    cmd = [sys.executable, "-m", "pcl_bench", "pretrain", *TINY, *args, "--out", str(tmp_path), "--name", "killed"]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    # Kill as soon as epoch 3's progress bar appears: epoch 2 is checkpointed and epoch 3 is training. No sleep,
    # so the kill cannot race past the end of a one-second epoch on a fast machine.
    seen = b""
    while b"epoch 3/3" not in seen:
        chunk = proc.stderr.read1(4096)
        assert chunk, "the run ended before epoch 3 started"
        seen += chunk
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=120)
    assert proc.returncode == -signal.SIGKILL
    assert torch.load(tmp_path / "killed" / "last.pt", weights_only=False)["epoch"] == 2

    assert run_cli(tmp_path, *args, "--resume", name="killed") == 0
    (sd_a, opt_a), (sd_b, opt_b) = _state(tmp_path / "straight" / "last.pt"), _state(tmp_path / "killed" / "last.pt")
    assert sd_a.keys() == sd_b.keys()
    for key in sd_a:
        assert torch.equal(sd_a[key], sd_b[key]), key
    for i in opt_a:
        assert torch.equal(opt_a[i]["momentum_buffer"], opt_b[i]["momentum_buffer"])
    assert [e["epoch"] for e in records(tmp_path / "killed", "epoch")] == [0, 1, 2]


@pytest.mark.parametrize("args, message", [
    (["--proto-negatives", "16"], "use --proto-negatives 8 or less"),
    (["--queue", "40"], "not a multiple of the global batch"),
    (["--num-cluster", "24,500"], "larger than the 120 training images"),
    (["--method", "byol"], "unknown --method"),
    (["--arch", "vgg16"], "unknown --arch"),
    (["--kmeans-backend", "sklearn"], "unknown --kmeans-backend"),
    (["--kmeans-iters", "0"], "at least 1"),
    (["--aug-backend", "dali"], "unknown --aug-backend"),
    (["--dataset", "mnist"], "unknown dataset"),
    (["--dataset", "cifar10", "--data-root", "/nonexistent"], "cifar-10-batches-py"),
    (["--resume"], "--resume: no run in"),
])
def test_bad_input_exits_2_with_one_line(tmp_path, capsys, args, message):
    """Constraints are checked up front: exit code 2, one line naming the problem."""
    assert run_cli(tmp_path, "--epochs", "1", *args) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1, err


# (training images, classes) of each dataset that has a small-scale preset
PRESET_SIZES = {"shapes": (5000, 10), "cifar10": (50000, 10), "cifar100": (50000, 100)}


@pytest.mark.parametrize("dataset", sorted(SCALE_PRESETS))
@pytest.mark.parametrize("method", ["pcl", "pcl_v2", "moco", "moco_v2", "instdisc", "simclr"])
def test_presets_pass_their_own_checks(dataset, method):
    """Each documented preset starts as written on its full-size dataset, on one process and on 8."""
    n, classes = PRESET_SIZES[dataset]
    for world in (1, 8):
        validate(resolve({"method": method, "dataset": dataset}), n, world, classes)


def test_scale_method_overrides_apply_to_their_dataset_only():
    """moco_v2 and pcl_v2 on shapes get shorter queues; pcl on shapes and moco_v2 on CIFAR keep 4096; a flag wins."""
    assert resolve({"method": "moco_v2"}).queue == 512
    assert resolve({"method": "pcl_v2"}).queue == 1024
    assert resolve({"method": "pcl"}).queue == 4096
    assert resolve({"method": "moco_v2", "dataset": "cifar10"}).queue == 4096
    assert resolve({"method": "moco_v2", "queue": 4096}).queue == 4096
    assert resolve({"method": "simclr", "dataset": "cifar100"}).temperature == 0.5


@pytest.mark.parametrize("method, backend", [("pcl_v2", "pil"), ("instdisc", "tensor")])
def test_aug_backends_train_and_resume_exactly(tmp_path, method, backend):
    """Both augmentation backends (the shapes preset's, tensor, also in the kill test above) draw from seeded
    generators: stopping after epoch 1 and resuming gives the same weights as running 2 epochs straight."""
    args = ["--method", method, "--aug-backend", backend, "--no-final-knn"]
    assert run_cli(tmp_path, *args, "--epochs", "2", name="straight") == 0
    assert run_cli(tmp_path, *args, "--epochs", "1", name="resumed") == 0
    assert run_cli(tmp_path, *args, "--epochs", "2", "--resume", name="resumed") == 0
    (sd_a, _), (sd_b, _) = _state(tmp_path / "straight" / "last.pt"), _state(tmp_path / "resumed" / "last.pt")
    assert all(torch.equal(sd_a[k], sd_b[k]) for k in sd_a)
    assert [e["epoch"] for e in records(tmp_path / "resumed", "epoch")] == [0, 1]


@pytest.mark.slow  # compiling a ResNet-18's forward and backward takes minutes on a CPU
def test_compiled_encoders_step_like_eager_ones():
    """--compile compiles the encoders in place: the same state_dict keys, and a moco_v2 step's loss and
    gradients equal the eager step's up to float rounding."""
    cfg = resolve({"method": "moco_v2", "arch": "resnet18", "image_size": 32, "batch_size": 16, "queue": 32,
                   "bn_splits": 2})
    set_world(cfg, 1)
    torch.manual_seed(0)
    eager = build_method(cfg, 100)
    compiled = copy.deepcopy(eager)
    engine.compile_encoders(compiled)
    assert compiled.state_dict().keys() == eager.state_dict().keys()
    views, index = [torch.randn(16, 3, 32, 32) for _ in range(2)], torch.arange(16)
    losses = []
    for model in (eager, compiled):
        torch.manual_seed(1)  # the same key shuffle
        loss = model(views, index)["loss"]
        loss.backward()
        losses.append(loss.item())
    assert losses[0] == pytest.approx(losses[1], rel=1e-4)
    for (name, a), b in zip(eager.named_parameters(), compiled.parameters()):
        if a.grad is not None:
            assert (a.grad - b.grad).norm() <= 1e-3 * a.grad.norm(), name


def test_existing_run_folder_and_resume_conflicts(tmp_path, capsys):
    """An existing run is never silently overwritten, and resume refuses a changed recipe."""
    assert run_cli(tmp_path, "--epochs", "1", "--no-final-knn") == 0
    assert run_cli(tmp_path, "--epochs", "1") == 2
    assert "--resume" in capsys.readouterr().err
    assert run_cli(tmp_path, "--epochs", "2", "--lr", "0.5", "--resume") == 2
    assert "--lr 0.5 differs" in capsys.readouterr().err
    assert run_cli(tmp_path, "--epochs", "1", "--overwrite", "--no-final-knn") == 0


def test_nan_loss_stops_and_keeps_last_good_checkpoint(tmp_path, monkeypatch, capsys):
    """A non-finite loss stops the run with exit 1; last.pt still holds the last good epoch."""
    real_forward = engine.METHODS["moco_v2"].forward
    calls = []

    def forward(self, views, index, clusters=None):
        out = real_forward(self, views, index, clusters)
        calls.append(1)
        if len(calls) > 7:  # 120 images / batch 16 = 7 steps: poison the first step of epoch 2
            out["loss"] = out["loss"] * float("nan")
        return out

    monkeypatch.setattr(engine.METHODS["moco_v2"], "forward", forward)
    assert run_cli(tmp_path, "--method", "moco_v2", "--epochs", "3") == 1
    assert "loss became nan at epoch 2, step 1" in capsys.readouterr().err
    assert torch.load(tmp_path / "run" / "last.pt", weights_only=False)["epoch"] == 1


def test_e_step_flags_reach_the_clustering(tmp_path, monkeypatch):
    """--warmup-epochs, --num-cluster, --concentration(-alpha), --kmeans-iters/-restarts/-backend and
    --proto-negatives all reach the E-step and ProtoNCE."""
    calls = []
    real = engine.e_step

    def spy(encoder, loader, n, num_cluster, temperature, device, **kw):
        calls.append(dict(num_cluster=num_cluster, temperature=temperature, **kw))
        return real(encoder, loader, n, num_cluster, temperature, device, **kw)

    monkeypatch.setattr(engine, "e_step", spy)
    assert run_cli(tmp_path, "--method", "pcl", "--epochs", "3", "--warmup-epochs", "2", "--num-cluster", "30,40,50",
                   "--concentration", "fixed", "--concentration-alpha", "3", "--kmeans-iters", "7",
                   "--kmeans-restarts", "2", "--kmeans-backend", "torch", "--proto-negatives", "6",
                   "--temperature", "0.3", "--no-final-knn") == 0
    assert len(calls) == 1  # epochs 0 and 1 are warm-up
    assert calls[0] == {"num_cluster": [30, 40, 50], "temperature": 0.3, "alpha": 3.0, "niter": 7, "nredo": 2,
                            "fixed_concentration": True, "backend": "torch", "amp": False}  # bfloat16 only on a GPU
    clusters = torch.load(tmp_path / "run" / "clusters.pt", weights_only=False)
    assert all(torch.allclose(d, torch.full_like(d, 0.3)) for d in clusters["density"])
    ckpt = torch.load(tmp_path / "run" / "last.pt", weights_only=False)
    assert ckpt["config"]["proto_negatives"] == 6


@pytest.mark.parametrize("cores, local_processes, expected", [(2, None, 2), (1, None, 1), (16, None, 8),
                                                                (16, "4", 4), (16, "32", 1)])
def test_default_workers_share_the_node_cores(monkeypatch, cores, local_processes, expected):
    """--workers unset: CPU cores per training process on this node (torchrun's LOCAL_WORLD_SIZE), 1 to 8, with
    per-image augmentation in the workers; none when the training loop augments whole batches."""
    monkeypatch.setattr(os, "cpu_count", lambda: cores)
    if local_processes:
        monkeypatch.setenv("LOCAL_WORLD_SIZE", local_processes)
    else:
        monkeypatch.delenv("LOCAL_WORLD_SIZE", raising=False)
    cfg = resolve({"method": "moco_v2", "aug_backend": "pil"})
    set_world(cfg, 1)
    assert cfg.workers == expected
    cfg = resolve({"method": "moco_v2"})  # shapes' preset augments in the training loop
    set_world(cfg, 1)
    assert cfg.aug_backend == "tensor" and cfg.workers == 0
    cfg = resolve({"method": "moco_v2", "workers": 3})
    set_world(cfg, 1)
    assert cfg.workers == 3  # an explicit value is kept


def test_a_method_from_outside_the_package_trains(tmp_path):
    """A new method is one module: registering it (here from tests/) makes it a --method of the CLI."""
    import byol_example  # noqa: F401  (registers byol_example)

    assert run_cli(tmp_path, "--method", "byol_example", "--epochs", "1", "--no-final-knn") == 0
    (epoch,) = records(tmp_path / "run", "epoch")
    assert epoch["loss"] > 0
    ckpt = torch.load(tmp_path / "run" / "last.pt", weights_only=False)
    assert ckpt["method"] == "byol_example" and any(k.startswith("predictor.") for k in ckpt["state_dict"])


def test_step_metrics_sum_on_the_device_as_the_host_did():
    """Summing on the device in float64 gives the sums of the per-step float32 values read one by one (the
    former per-step .item() path), bit for bit, also continuing from a resume's sums; a NaN is reported with
    its step at the next read."""
    gen = torch.Generator().manual_seed(0)
    steps = [{"loss": torch.rand((), generator=gen) * 5, "acc_inst": torch.rand((), generator=gen) * 100}
             for _ in range(50)]
    host = {"loss": 1.25, "acc_inst": 3.5}
    metrics = engine.StepMetrics(dict(host))
    for i, out in enumerate(steps):
        metrics.add(out, i)
        for k, v in out.items():
            host[k] += v.float().item()
    assert metrics.sums() == host
    assert metrics.read("at epoch 1", "last.pt", 0) == {k: v.item() for k, v in steps[-1].items()}
    metrics.add({"loss": torch.tensor(float("inf")), "acc_inst": torch.tensor(1.0)}, 50)
    metrics.add({"loss": torch.tensor(1.0), "acc_inst": torch.tensor(1.0)}, 51)
    with pytest.raises(engine.TrainingDiverged, match="loss became inf at epoch 1, step 51;"):
        metrics.read("at epoch 1", "last.pt", 0)
