"""Protocol specs and the generic runner: spec resolution, errors, and a tiny checkpoint through every protocol."""
import json
import shutil

import numpy as np
import pytest
import tomllib
from PIL import Image
from test_pretrain import TINY

from pcl_bench.cli import main
from pcl_bench.data import shapes_voc
from pcl_bench.eval import runner as E
from pcl_bench.eval import specs as S
from pcl_bench.eval.store import read_rows
from pcl_bench.runtime.errors import UsageError
from pcl_bench.runtime.paths import package_path


def test_every_spec_is_valid():
    specs = sorted(package_path("eval", "protocols").glob("*.toml"))
    assert len(specs) >= 10
    for path in specs:
        spec = tomllib.loads(path.read_text())
        assert spec["protocol"] in E.PROTOCOLS, path.name  # the runner registry
        for dataset in spec["datasets"]:
            for smoke in (False, True):
                resolved = S.resolve_spec(path, dataset, None, {}, smoke)
                assert "train_split" not in resolved and "test_split" not in resolved  # the dataset's own
            assert set(spec.get("paper", {}).get("datasets", [])) <= set(spec["datasets"]), path.name


def test_one_spec_per_protocol_and_dataset():
    """No two shipped specs claim the same (protocol, dataset), so the spec an evaluation uses is never a
    matter of file order."""
    claims = [(spec["protocol"], d, path.name) for path, spec in S.spec_files() for d in spec["datasets"]]
    pairs = [(p, d) for p, d, _ in claims]
    assert len(pairs) == len(set(pairs)), sorted(c for c in claims if pairs.count(c[:2]) > 1)


def test_two_specs_claiming_a_dataset_is_an_error(tmp_path):
    for name in ("a.toml", "b.toml"):
        (tmp_path / name).write_text('protocol = "knn"\ndatasets = ["cifar10"]\nks = [20]\nt = 0.07\n')
    with pytest.raises(UsageError, match="a.toml and b.toml both list dataset 'cifar10' for knn"):
        S.find_spec("knn", "cifar10", tmp_path)


def test_spec_resolution():
    voc = S.find_spec("lowshot", "voc07")
    assert voc.name == "lowshot_voc07.toml" and S.find_spec("lowshot", "shapes-voc") == voc
    assert S.find_spec("lowshot", "shapes").name == "lowshot_places205.toml"
    paper = S.resolve_spec(voc, "voc07", None, {})
    assert (paper["variant"], paper["feature"], paper["ks"], paper["costs"], paper["runs"]) == \
        ("pcl", "pool", [1, 2, 4, 8, 16], [0.5], 5)
    goyal = S.resolve_spec(voc, "voc07", "goyal", {"runs": 2})
    assert goyal["feature"] == "res5_2x2" and goyal["ks"][-1] == 96 and goyal["runs"] == 2
    assert S.resolve_spec(voc, "shapes-voc", None, {})["image_size"] == 64
    assert S.resolve_spec(voc, "voc07", None, {}, smoke=True)["ks"] == [1, 2]
    assert S.paper_setup("lowshot", "voc07") == {"arch": "resnet50", "train_split": "trainval",
                                                 "test_split": "test", "image_size": 224}
    assert S.paper_setup("lowshot", "voc12") == {} and S.paper_setup("knn", "imagefolder") == {}


def test_eval_all_opens_each_split_once(monkeypatch):
    calls = []
    build = E.build_dataset
    monkeypatch.setattr(E, "build_dataset", lambda *a, **k: calls.append(a) or build(*a, **k))
    opened = {}
    knn, ami = (E.plan(p, "shapes", opened=opened, device="cpu") for p in ("knn", "ami"))
    assert len(calls) == 2 and knn.split("train") is ami.split("train")


@pytest.mark.parametrize("call, message", [
    (lambda: S.find_spec("lowshot", "mnist"), "no lowshot protocol spec lists dataset 'mnist'"),
    (lambda: S.resolve_spec(S.find_spec("knn", "shapes"), "shapes", "goyal", {}), "unknown --variant 'goyal'"),
    (lambda: S.resolve_spec(S.find_spec("knn", "shapes"), "shapes", None, {"fractions": [0.1]}),
     "--fractions does not apply to the knn protocol"),
])
def test_spec_errors(call, message):
    with pytest.raises(UsageError, match=message):
        call()


def test_wrong_voc_root_writes_nothing(tmp_path, capsys):
    store = tmp_path / "store.jsonl"
    code = main(["eval", "lowshot", "--dataset", "voc07", "--data-root", str(tmp_path / "nowhere"),
                 "--checkpoint", "random:resnet18", "--results", str(store)])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1
    assert "ImageSets/Main" in err and "JPEGImages" in err
    assert not store.exists()


@pytest.fixture(scope="module")
def tiny_checkpoint(tmp_path_factory):
    out = tmp_path_factory.mktemp("runs")
    assert main(["pretrain", *TINY, "--method", "pcl_v2", "--epochs", "2", "--no-final-knn", "--out", str(out),
                 "--name", "tiny"]) == 0
    return out / "tiny" / "last.pt"


def test_every_protocol_to_the_report(tiny_checkpoint, tmp_path, monkeypatch, capsys):
    """A tiny checkpoint and a random encoder through every protocol on shapes / shapes-voc, then the report."""
    monkeypatch.setattr(shapes_voc, "DEFAULT_SIZES", {"trainval": 60, "test": 40})
    store = tmp_path / "results" / "store.jsonl"
    quick = {
        "lowshot": ["--ks", "1,2", "--runs", "2"],
        "linear": ["--epochs", "3"],
        "knn": ["--ks", "5,20"],
        "semisup": ["--fractions", "0.01", "--epochs", "1"],
        "ami": ["--clusters", "10"],
    }
    for ckpt in (str(tiny_checkpoint), "random:resnet18"):
        for protocol, flags in quick.items():
            assert main(["eval", protocol, "--dataset", "shapes", "--checkpoint", ckpt, "--results", str(store),
                         "--workers", "0", *flags]) == 0, protocol
        assert main(["eval", "lowshot", "--dataset", "shapes-voc", "--checkpoint", ckpt, "--results", str(store),
                     "--workers", "0", "--ks", "1", "--runs", "2"]) == 0
    rows = read_rows(store)
    ours = rows[rows["method"] == "pcl_v2"]
    assert set(ours["protocol"]) == {"lowshot", "linear", "knn", "semisup", "ami"}
    assert set(ours["dataset"]) == {"shapes", "shapes-voc"}
    assert set(rows["method"]) == {"pcl_v2", "random init"}
    voc = ours[(ours["dataset"] == "shapes-voc")]
    per_class, voc = voc[voc["class"] != ""], voc[voc["class"] == ""]
    assert list(voc["setting"]) == ["k=1", "full"] and (voc["metric"] == "mAP").all()
    assert len(per_class) == 2 * 10 and (per_class["metric"] == "AP").all()  # k=1 and full, 10 classes
    assert list(voc["seeds"].iloc[0]) == [0, 1] and voc["n_runs"].iloc[0] == 2
    assert {"ami", "ami_coarse", "nmi", "ari"} <= set(ours[ours["protocol"] == "ami"]["metric"])
    assert (ours["git_commit"] != "").all() and (ours["checkpoint_sha256"].str.len() == 16).all()
    assert json.loads(store.read_text().splitlines()[0])["params"]["spec"] == "lowshot_places205.toml"
    assert list((tmp_path / "results" / "subsets").glob("shapes_train_0.01_seed0.json"))

    capsys.readouterr()
    assert main(["report", "--results", str(store), "--out", str(tmp_path / "results"), "--runs",
                 str(tiny_checkpoint.parent.parent)]) == 0
    out = capsys.readouterr().out
    assert "measured" in out and "paper" in out and "pcl_v2" in out
    for name in ("table1_lowshot.md", "table2_semisup.csv", "table3_linear.csv", "table4_knn.csv",
                 "table7_ami.csv", "lowshot_curves.png", "tsne.png"):
        assert (tmp_path / "results" / name).stat().st_size > 0, name


def test_a_new_dataset_is_one_toml_edit(tmp_path, monkeypatch, capsys):
    """The edit docs/datasets.md shows: a new name in a spec's datasets, with its layout."""
    protocols = tmp_path / "protocols"
    shutil.copytree(package_path("eval", "protocols"), protocols)
    knn = protocols / "knn.toml"
    knn.write_text(knn.read_text().replace('"imagefolder"]', '"imagefolder", "mydata"]')
                   + '\n[overrides.mydata]\nlayout = "imagefolder"\n')
    monkeypatch.setattr(S, "package_path", lambda *parts: protocols)
    rng = np.random.default_rng(0)
    for split, n in (("train", 6), ("val", 2)):
        for cls in ("a", "b"):
            (tmp_path / "mydata" / split / cls).mkdir(parents=True)
            for i in range(n):
                Image.fromarray(rng.integers(0, 255, (16, 16, 3), dtype=np.uint8)).save(
                    tmp_path / "mydata" / split / cls / f"{i}.png")
    store = tmp_path / "store.jsonl"
    assert main(["eval", "knn", "--dataset", "mydata", "--data-root", str(tmp_path / "mydata"), "--checkpoint",
                 "random:resnet18", "--results", str(store), "--workers", "0"]) == 0, capsys.readouterr().err
    rows = read_rows(store)
    assert set(rows["dataset"]) == {"mydata"} and set(rows["test_split"]) == {"val"}
    assert {p["image_size"] for p in rows["params"]} == {16}
