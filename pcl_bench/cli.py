"""The ``pcl-bench`` command. Bad input exits with code 2 and one line naming the problem and the fix."""
from __future__ import annotations

import argparse
import dataclasses
import sys
import typing

from .config import SCALE_PRESETS, PretrainConfig
from .eval.store import DEFAULT_PATH
from .methods import METHODS
from .runtime.errors import DiskFull, UsageError, one_line


def _list_of(kind: type):
    """An argparse type: comma-separated values of ``kind``, e.g. ``1,2,4``."""
    def parse(text: str) -> list:
        try:
            return [kind(x) for x in text.split(",") if x]
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected comma-separated {kind.__name__}s, got {text!r}") from None
    return parse


_int_list, _float_list = _list_of(int), _list_of(float)


DEFAULT_STORE = str(DEFAULT_PATH)
# ``pcl-bench eval`` flags of the dataset (any protocol, also ``eval all``): its splits and image size.
DATASET_FLAGS: dict[str, tuple] = {
    "train_split": (str, ("split the classifier / bank / clustering / detector trains on "
                          "[default: the dataset's: train; trainval for VOC]")),
    "test_split": (str, ("split scored [default: the dataset's: test; val for imagenet and places205; "
                         "test/ or val/ of an imagefolder tree]")),
    "image_size": (int, ("evaluation crop size; detection: shorter side at test time "
                         "[default: the spec's, else the dataset's]")),
}
# ``pcl-bench eval`` flags that override a protocol spec's entry of the same name.
SPEC_FLAGS = {
    "ks": (_int_list, "lowshot: positives per class; knn: neighbours"),
    "runs": (int, "lowshot / detection: independent runs"),
    "seed": (int, "base seed (run r uses seed + r)"),
    "costs": (_float_list, "lowshot: SVM costs (several: chosen by cross-validation on the training samples)"),
    "epochs": (int, "linear / semisup / detection: epochs"),
    "lr": (float, "linear: learning rate (5: PCL preset, 30: MoCo preset)"),
    "mode": (str, "linear: 'full' (augmented images) or 'fast' (cached centre-crop features)"),
    "fractions": (_float_list, "semisup: label fractions, e.g. 0.01,0.1"),
    "clusters": (_int_list, "ami: numbers of k-means clusters, e.g. 25000,50000,100000"),
    "t": (float, "knn: temperature"),
    "max_iters": (int, "detection: stop training after this many iterations (0: the whole schedule)"),
    "train_subset": (int, "detection: train on a seeded subset of this many images (0: all)"),
    "test_subset": (int, "detection: score a seeded subset of this many test images (0: all)"),
    "train_sizes": (_int_list, "detection: shorter sides drawn per training batch, e.g. 480 or 480,512,..."),
}


def _add_eval_parser(sub) -> None:
    from .eval.runner import PROTOCOLS
    ev = sub.add_parser("eval", help="evaluate a checkpoint with one of the paper's protocols")
    ev.add_argument("protocol", choices=[*PROTOCOLS, "all", "grid"],
                    help="the protocol; 'all' runs every protocol whose spec lists --dataset; 'grid' runs "
                         "checkpoints x protocols x seeds as jobs (see pcl-bench eval grid -h)")
    ev.add_argument("--dataset", required=True, help="voc07, voc12, shapes-voc, places205, imagenet, imagefolder, "
                                                     "cifar10, shapes, ...")
    ev.add_argument("--data-root", help="dataset root (not needed for shapes and shapes-voc)")
    ev.add_argument("--checkpoint", required=True,
                    help="this suite's run checkpoint, a released MoCo/PCL checkpoint, torchvision ResNet weights, "
                         "or random:<arch>[:<stem>] for a randomly initialised encoder")
    ev.add_argument("--arch", help="expected backbone (resnet18/34/50; default: inferred from the checkpoint)")
    ev.add_argument("--spec", help="protocol spec file (default: the protocols/*.toml that lists --dataset)")
    ev.add_argument("--variant", help="spec variant, e.g. lowshot --variant goyal, detection --variant short")
    ev.add_argument("--label", help="method name in the results (default: from the checkpoint)")
    ev.add_argument("--results", default=DEFAULT_STORE, help="results store to append to (label subsets, "
                                                            "logs and t-SNE samples go next to it)")
    ev.add_argument("--device", default="auto", help="auto, cpu or cuda")
    ev.add_argument("--workers", type=int, default=2, help="data-loading worker processes")
    ev.add_argument("--batch-size", type=int, default=256, help="feature-extraction batch size")
    ev.add_argument("--smoke", action="store_true",
                    help="run the protocol as configured on a few images per class (the spec's [smoke] table) "
                         "to find problems in seconds; prints its rows and stores none")
    ev.add_argument("--skip-corrupt", action="store_true",
                    help="decode every image of the splits first and leave out the unreadable ones (listed, and "
                         "recorded in the rows); without it an unreadable image stops the evaluation")
    for name, (kind, help_text) in {**DATASET_FLAGS, **SPEC_FLAGS}.items():
        ev.add_argument("--" + name.replace("_", "-"), type=kind, help=f"{help_text} [default: the spec's]"
                        if name in SPEC_FLAGS else help_text)


def _add_slurm_flags(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("SLURM (--executor slurm; needs pip install 'pcl-bench[slurm]')")
    group.add_argument("--partition", help="SLURM partition [default: the cluster's]")
    group.add_argument("--account", help="SLURM account to charge [default: yours]")
    group.add_argument("--time-min", type=int, default=60, help="time limit per job in minutes [default: 60]")
    group.add_argument("--cpus-per-task", type=int, help="CPU cores per task [default: the cluster's]")


def grid_parser() -> argparse.ArgumentParser:
    """``pcl-bench eval grid``: its own parser, since it takes several checkpoints and protocols."""
    from .eval.runner import PROTOCOLS
    gr = argparse.ArgumentParser(
        prog="pcl-bench eval grid",
        description="Evaluate every checkpoint with every protocol and seed, each as one 'pcl-bench eval' job; "
                    "rows go to one results store, jobs already in it are skipped (a rerun does what is "
                    "left), and the table of means with 95% confidence intervals over seeds and paired tests "
                    "between checkpoints goes to --out.")
    gr.add_argument("--checkpoints", type=_list_of(str), required=True,
                    help="comma-separated checkpoints or globs, e.g. 'runs/a/checkpoint_*.pt,runs/b/last.pt' "
                         "(quote globs), or random:<arch>")
    gr.add_argument("--protocols", type=_list_of(str),
                    help=f"comma-separated, of {', '.join(PROTOCOLS)} [default: every protocol whose spec "
                         f"lists --dataset]")
    gr.add_argument("--dataset", required=True, help="as for pcl-bench eval")
    gr.add_argument("--data-root", help="dataset root (not needed for shapes and shapes-voc)")
    gr.add_argument("--seeds", type=_int_list, help="comma-separated seeds, e.g. 0,1,2, for the protocols whose "
                                                    "spec has a seed [default: the spec's seed]")
    gr.add_argument("--arch", help="expected backbone [default: inferred from each checkpoint]")
    gr.add_argument("--results", default=DEFAULT_STORE, help="results store to append to")
    gr.add_argument("--out", help="folder for the grid's table and job logs [default: grid/ next to the store]")
    gr.add_argument("--device", default="auto", help="auto, cpu or cuda (each job)")
    gr.add_argument("--workers", type=int, default=2, help="data-loading worker processes per job")
    gr.add_argument("--batch-size", type=int, default=256, help="feature-extraction batch size")
    gr.add_argument("--skip-corrupt", action="store_true", help="as for pcl-bench eval")
    for name, (kind, help_text) in DATASET_FLAGS.items():
        gr.add_argument("--" + name.replace("_", "-"), type=kind, help=help_text)
    gr.add_argument("--executor", choices=["local", "slurm"], default="local",
                    help="local: processes on this machine; slurm: one SLURM job each [default: local]")
    gr.add_argument("--max-parallel", type=int, default=1,
                    help="local: jobs at once, each with cores / N threads [default: 1]")
    gr.add_argument("--gpus-per-job", type=int, default=0, help="slurm: GPUs per job [default: 0]")
    _add_slurm_flags(gr)
    return gr


def _add_config_flags(parser: argparse.ArgumentParser, skip: tuple[str, ...] = ()) -> None:
    """One flag per :class:`PretrainConfig` field but ``skip``; unset flags stay None so presets fill them."""
    hints = typing.get_type_hints(PretrainConfig)
    for f in dataclasses.fields(PretrainConfig):
        if f.name in skip:
            continue
        flag = "--" + f.name.replace("_", "-")
        kind = hints[f.name]
        default = f.default if not f.metadata.get("list") else ",".join(map(str, f.default))
        help_text = f"{f.metadata['help']} [default: {default}; presets may change it]"
        if kind is bool:
            parser.add_argument(flag, action=argparse.BooleanOptionalAction, default=None, help=help_text)
        elif f.metadata.get("list"):
            parser.add_argument(flag, type=_int_list, default=None, metavar="N,N,...", help=help_text)
        else:
            base = next(t for t in typing.get_args(kind) or (kind,) if t is not type(None))
            parser.add_argument(flag, type=base, default=None, help=help_text)


def _add_analyze_parser(sub) -> None:
    ana = sub.add_parser("analyze", help="analyses of a checkpoint's embeddings")
    what = ana.add_subparsers(dest="analysis", required=True)
    col = what.add_parser("collapse", help="dimensional collapse: covariance spectrum (PNG), effective rank, "
                                          "rank95 overall and per class, total variance; appended to the "
                                          "store")
    col.add_argument("--checkpoint", required=True, help="a run's last.pt, a released MoCo/PCL checkpoint...")
    col.add_argument("--dataset", required=True, help="shapes, cifar10, imagenet, ...")
    col.add_argument("--data-root", help="dataset root (not needed for shapes)")
    col.add_argument("--split", help="split embedded [default: test, or val for imagenet]")
    col.add_argument("--image-size", type=int, help="centre-crop size [default: the run's training crop, "
                                                    "else the dataset's native size]")
    col.add_argument("--label", help="method name in the results (default: from the checkpoint)")
    col.add_argument("--results", default=DEFAULT_STORE,
                     help="results store to append to; the PNG and JSON go to its folder's collapse/")
    col.add_argument("--device", default="auto", help="auto, cpu or cuda")
    col.add_argument("--workers", type=int, default=2, help="data-loading worker processes")
    col.add_argument("--batch-size", type=int, default=256, help="feature-extraction batch size")


def _add_sweep_parser(sub) -> None:
    sw = sub.add_parser(
        "sweep", help="pretrain each method at each learning rate and plot kNN accuracy and effective rank",
        description="Train every --methods x --lr pair with every other setting fixed (pretraining flags "
                    "as for pcl-bench pretrain), score kNN top-1 and the collapse metrics on the test split, "
                    "and write sweep_<dataset>.csv, .md and .png to --results-dir. Finished points are "
                    "reused.")
    sw.add_argument("--methods", type=_list_of(str), required=True,
                    help="comma-separated methods, e.g. simclr,clop")
    sw.add_argument("--lr", type=_float_list, required=True,
                    help="comma-separated learning rates, e.g. 0.01,0.1,1")
    sw.add_argument("--results-dir", default="runs/sweep", help="folder for the table and figure")
    _add_config_flags(sw, skip=("method", "lr", "name", "resume", "final_knn", "smoke"))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="pcl-bench", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    pre = sub.add_parser(
        "pretrain", help="pretrain an encoder",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Pretrain an encoder with PCL, MoCo, InstDisc or SimCLR and write a run folder.\n\n"
                    f"methods: {', '.join(METHODS)}\n"
                    f"datasets: shapes (default, generated locally), imagenet, imagefolder, cifar10, cifar100, "
                    f"stl10\nsmall-scale presets exist for: {', '.join(SCALE_PRESETS)}; defaults otherwise "
                    f"follow the paper's ImageNet recipe.\nMulti-GPU / multi-node: "
                    f"torchrun --nproc-per-node N -m pcl_bench pretrain ...")
    _add_config_flags(pre)
    launch = pre.add_argument_group("launching")
    launch.add_argument("--executor", choices=["local", "slurm"], default="local",
                        help="local: train in this process; slurm: submit the same command as a SLURM job "
                             "(requeued on preemption, resumed from its last checkpoint) [default: local]")
    launch.add_argument("--nodes", type=int, default=1, help="slurm: nodes [default: 1]")
    launch.add_argument("--gpus-per-node", type=int, default=0,
                        help="slurm: GPUs per node, one training process each [default: 0: one CPU process]")
    _add_slurm_flags(pre)
    _add_eval_parser(sub)
    rep = sub.add_parser("report", help="rebuild the paper's tables and figures from the results store")
    rep.add_argument("--results", default=DEFAULT_STORE, help="results store to read")
    rep.add_argument("--out", help="folder for the tables and PNGs [default: report/ next to the store]")
    rep.add_argument("--runs", default="runs", help="pretraining run folders (for the cluster-size figure)")
    rep.add_argument("--features", help="t-SNE feature files [default: <results folder>/features]")
    _add_analyze_parser(sub)
    _add_sweep_parser(sub)
    exp = sub.add_parser("export", help="write a checkpoint's backbone in another format")
    exp.add_argument("--checkpoint", required=True)
    exp.add_argument("--format", choices=["torchvision"], default="torchvision",
                     help="torchvision: a plain ResNet state_dict without fc")
    exp.add_argument("--out", required=True, help="output file")
    return parser


def _eval(args: argparse.Namespace) -> None:
    from .eval.runner import format_rows, plan, protocols_for, run
    overrides = {k: getattr(args, k) for k in {**DATASET_FLAGS, **SPEC_FLAGS} if getattr(args, k) is not None}
    protocols = protocols_for(args.dataset) if args.protocol == "all" else [args.protocol]
    if len(protocols) > 1 and (set(overrides) - set(DATASET_FLAGS) or args.spec or args.variant):
        raise UsageError("eval all runs each protocol with its spec's settings; keep only --train-split, "
                         "--test-split and --image-size, or name one protocol")
    # Every evaluation is planned (specs, splits, images) before the first one runs; they share opened splits.
    opened: dict = {}
    plans = [plan(p, args.dataset, args.data_root, spec_file=args.spec, variant=args.variant,
                  overrides=overrides, smoke=args.smoke, skip_corrupt=args.skip_corrupt, results=args.results,
                  device=args.device, workers=args.workers, batch_size=args.batch_size, opened=opened)
             for p in protocols]
    for ev in plans:
        rows = run(ev, args.checkpoint, arch=args.arch, label=args.label, results=args.results)
        print(format_rows(rows))
        print(f"smoke run of {ev.protocol}: {len(rows)} rows, not stored" if args.smoke else
              f"appended {len(rows)} rows to {args.results}", flush=True)


def _report(args: argparse.Namespace) -> None:
    from pathlib import Path

    from .analysis.report import build_report
    features = Path(args.features) if args.features else Path(args.results).parent / "features"
    out = Path(args.out) if args.out else Path(args.results).parent / "report"
    written = build_report(args.results, out, runs_dir=args.runs if Path(args.runs).is_dir() else None,
                           features_dir=features if features.is_dir() else None)
    for name, path in written.items():
        if name.endswith(".md"):
            print(path.read_text())
    print(f"wrote {len(written)} files to {out}: {', '.join(written)}")


def _analyze(args: argparse.Namespace) -> None:
    from .analysis.collapse import analyze_collapse, format_metrics
    out = analyze_collapse(args.checkpoint, args.dataset, args.data_root, args.split, args.results,
                           args.image_size, args.label, args.device, args.workers, args.batch_size)
    info = out["info"]
    print(f"collapse metrics of {args.label or info['method']} ({args.checkpoint}) on {args.dataset} "
          f"{info['split']}, {info['images']} images at {info['image_size']} px\n"
          f"{format_metrics(out['metrics'])}")
    print(f"spectrum: {out['png']}; all metrics: {out['json']}; appended {len(out['rows'])} rows to "
          f"{args.results}")


def _sweep(args: argparse.Namespace) -> None:
    from pathlib import Path

    from .train.sweep import run_sweep
    common = {k: v for k, v in vars(args).items()
              if k not in ("command", "methods", "lr", "results_dir", "label_fraction", "overwrite")}
    dataset, out = args.dataset or PretrainConfig.dataset, Path(args.results_dir)
    run_sweep(args.methods, args.lr, dataset, args.label_fraction, common, out, bool(args.overwrite))
    print((out / f"sweep_{dataset}.md").read_text())
    print(f"wrote sweep_{dataset}.csv, .md and .png to {out}")


def _export(args: argparse.Namespace) -> None:
    from .models.checkpoints import export_torchvision
    info = export_torchvision(args.checkpoint, args.out)
    print(f"wrote the {info['arch']} backbone of {args.checkpoint} as a torchvision state_dict to {args.out}")


def _slurm_resources(args: argparse.Namespace, **shape: int):
    from .runtime.launch import SlurmResources
    return SlurmResources(partition=args.partition, account=args.account, time_min=args.time_min,
                          cpus_per_task=args.cpus_per_task, **shape)


def _grid(args: argparse.Namespace) -> int:
    from pathlib import Path

    from .analysis.seeds import write_seed_tables
    from .eval.grid import expand_checkpoints, grid_rows, plan_grid, run_grid, stored_keys
    from .eval.runner import protocols_for
    from .runtime.launch import require_slurm
    if args.max_parallel < 1:
        raise UsageError(f"--max-parallel {args.max_parallel}: give 1 or more")
    if args.executor == "slurm":
        require_slurm()
    out = Path(args.out) if args.out else Path(args.results).parent / "grid"
    jobs = plan_grid(expand_checkpoints(args.checkpoints), args.protocols or protocols_for(args.dataset),
                     args.dataset, args.data_root, args.seeds, results=args.results, log_dir=out / "logs",
                     arch=args.arch, fixed={k: getattr(args, k) for k in DATASET_FLAGS}, device=args.device,
                     workers=args.workers, batch_size=args.batch_size, skip_corrupt=args.skip_corrupt)
    done = stored_keys(args.results)
    todo = [j for j in jobs if j.key not in done]
    print(f"{len(jobs)} jobs: {len(jobs) - len(todo)} already in {args.results}, {len(todo)} to run", flush=True)
    slurm = _slurm_resources(args, gpus_per_node=args.gpus_per_job)
    codes = run_grid(todo, args.executor, args.max_parallel, slurm, out / "slurm") if todo else {}
    rows = grid_rows(jobs, args.results)
    rows = rows[rows["class"].fillna("") == ""]  # per-class APs stay in the store
    if len(rows):
        stem = out / f"grid_{args.dataset}"
        print(write_seed_tables(rows.assign(checkpoint=rows["label"], value=rows["mean"].astype(float)),
                                ["protocol", "setting", "metric"], stem), end="")
        print(f"wrote {stem}.md, {stem.name}.csv (mean and 95% CI over seeds) and {stem.name}_tests.csv "
              f"(paired t-tests)")
    failed = sorted(name for name, code in codes.items() if code)
    if failed:
        print(f"pcl-bench: {len(failed)} of {len(todo)} jobs failed ({', '.join(failed)}); their logs are in "
              f"{out / 'logs'}; run the same command again to retry them", file=sys.stderr)
    return 1 if failed else 0


def _submit_pretrain(args: argparse.Namespace, argv: list[str]) -> None:
    """Submit ``pcl-bench pretrain <argv>`` (without the launching flags) as one SLURM job of ``--nodes`` x
    ``--gpus-per-node`` processes; submitit's scripts and logs go to ``<out>/<name>.slurm/``."""
    from .runtime.launch import CommandJob, require_slurm, slurm_executor
    from .train.engine import config_for_run
    require_slurm()
    cfg = config_for_run(_config_overrides(args))  # bad flags stop here, not on the cluster
    tasks = max(1, args.gpus_per_node)
    resources = _slurm_resources(args, nodes=args.nodes, gpus_per_node=args.gpus_per_node, tasks_per_node=tasks)
    folder = cfg.run_dir.parent / f"{cfg.run_dir.name}.slurm"
    executor = slurm_executor(folder, dataclasses.replace(resources, job_name=f"pcl-bench-{cfg.run_dir.name}"))
    job = executor.submit(CommandJob(["pretrain", *_without(argv, LAUNCH_FLAGS)], resume_dir=cfg.run_dir))
    print(f"submitted SLURM job {job.job_id}: {args.nodes} node(s) x {tasks} process(es) training into "
          f"{cfg.run_dir}; logs: {job.paths.stdout.parent}")


# pretrain flags that say where the command runs; the submitted command is the same without them
LAUNCH_FLAGS = ("executor", "nodes", "gpus_per_node", "partition", "account", "time_min", "cpus_per_task")


def _config_overrides(args: argparse.Namespace) -> dict:
    return {k: v for k, v in vars(args).items() if k != "command" and k not in LAUNCH_FLAGS}


def _without(argv: list[str], flags) -> list[str]:
    """``argv`` without the options named in ``flags`` (``--flag value`` and ``--flag=value`` forms)."""
    names = {"--" + f.replace("_", "-") for f in flags}
    out, skip = [], False
    for token in argv:
        if skip:
            skip = False
        elif token in names:
            skip = True
        elif token.split("=", 1)[0] not in names:
            out.append(token)
    return out


def _pretrain(args: argparse.Namespace, argv: list[str]) -> int:
    from .train.engine import TrainingDiverged, config_for_run, pretrain
    from .train.interrupt import Interrupted, StopSignals
    if args.executor == "slurm":
        _submit_pretrain(args, argv)
        return 0
    try:
        with StopSignals():  # a signal during set-up stops at once, with the same message
            pretrain(config_for_run(_config_overrides(args)))
    except TrainingDiverged as e:
        print(f"pcl-bench: {e}", file=sys.stderr)
        return 1
    except Interrupted as e:
        print(f"pcl-bench: {e}", file=sys.stderr)
        return e.exit_code
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    grid = argv[:2] == ["eval", "grid"]
    args = grid_parser().parse_args(argv[2:]) if grid else build_parser().parse_args(argv)
    try:
        if grid:
            return _grid(args)
        if args.command == "pretrain":
            return _pretrain(args, argv[1:])
        {"eval": _eval, "report": _report, "export": _export, "analyze": _analyze,
         "sweep": _sweep}[args.command](args)
    except UsageError as e:
        print(f"pcl-bench: error: {one_line(e)}", file=sys.stderr)
        return 2
    except DiskFull as e:
        print(f"pcl-bench: error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
