"""The ``pcl-bench`` command. Bad input exits with code 2 and one line naming the problem and the fix."""
from __future__ import annotations

import argparse
import dataclasses
import sys
import typing

from .config import METHOD_PRESETS, SCALE_PRESETS, PretrainConfig
from .errors import UsageError


def _int_list(text: str) -> list[int]:
    try:
        return [int(x) for x in text.split(",") if x]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None


def _add_config_flags(parser: argparse.ArgumentParser) -> None:
    """One flag per :class:`PretrainConfig` field; unset flags stay None so presets can fill them."""
    hints = typing.get_type_hints(PretrainConfig)
    for f in dataclasses.fields(PretrainConfig):
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


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="pcl-bench", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    pre = sub.add_parser(
        "pretrain", help="pretrain an encoder",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Pretrain an encoder with PCL, MoCo, InstDisc or SimCLR and write a run folder.\n\n"
                    f"methods: {', '.join(METHOD_PRESETS)}\n"
                    f"datasets: shapes (default, generated locally), imagenet, imagefolder, cifar10, cifar100, "
                    f"stl10\nsmall-scale presets exist for: {', '.join(SCALE_PRESETS)}; defaults otherwise "
                    f"follow the paper's ImageNet recipe.\nMulti-GPU / multi-node: "
                    f"torchrun --nproc-per-node N -m pcl_bench pretrain ...")
    _add_config_flags(pre)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        if args.command == "pretrain":
            from .pretrain import TrainingDiverged, config_for_run, pretrain
            overrides = {k: v for k, v in vars(args).items() if k != "command"}
            try:
                pretrain(config_for_run(overrides))
            except TrainingDiverged as e:
                print(f"pcl-bench: {e}", file=sys.stderr)
                return 1
    except UsageError as e:
        print(f"pcl-bench: error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
