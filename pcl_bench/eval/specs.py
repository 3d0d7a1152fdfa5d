"""Protocol specs: the ``protocols/*.toml`` files that describe each evaluation protocol as data.

A spec names its ``protocol``, the ``datasets`` it covers (exactly one spec per protocol and dataset), its
settings, and optional tables: ``[variants.<name>]`` (``--variant``), ``[overrides.<dataset>]``, ``[smoke]``
(``--smoke``) and ``[paper]`` (the paper's arch, splits and image size on the datasets it reports).
"""
from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from ..runtime.errors import UsageError
from ..runtime.paths import package_path

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib


def spec_files(spec_dir: Path | None = None) -> list[tuple[Path, dict[str, Any]]]:
    """Every ``(path, parsed spec)`` in ``spec_dir`` (default: the repository's ``protocols/``), by name."""
    spec_dir = spec_dir or package_path("eval", "protocols")
    return [(p, tomllib.loads(p.read_text())) for p in sorted(spec_dir.glob("*.toml"))]


def find_spec(protocol: str, dataset: str, spec_dir: Path | None = None) -> Path:
    """The one spec file of ``protocol`` whose ``datasets`` list contains ``dataset``."""
    candidates = [(path, spec) for path, spec in spec_files(spec_dir) if spec.get("protocol") == protocol]
    found = [path for path, spec in candidates if dataset in spec.get("datasets", [])]
    if len(found) > 1:
        raise UsageError(f"{' and '.join(p.name for p in found)} both list dataset {dataset!r} for {protocol}; "
                         f"keep it in one of them, or pass --spec FILE")
    if not found:
        raise UsageError(f"no {protocol} protocol spec lists dataset {dataset!r} "
                         f"(specs: {', '.join(p.name for p, _ in candidates)}); "
                         f"add it to a spec's datasets or pass --spec FILE")
    return found[0]


def resolve_spec(path: Path, dataset: str, variant: str | None, overrides: dict[str, Any],
                 smoke: bool = False) -> dict[str, Any]:
    """Spec ``path`` with its ``[variants.<variant>]``, ``[overrides.<dataset>]``, (``smoke``) ``[smoke]``
    tables and ``overrides`` applied; ``paper`` holds its ``[paper]`` table."""
    try:
        raw = tomllib.loads(Path(path).read_text())
    except (OSError, tomllib.TOMLDecodeError) as e:
        raise UsageError(f"cannot read protocol spec {path}: {e}") from None
    variants = raw.pop("variants", {})
    per_dataset = raw.pop("overrides", {})
    smoke_table = raw.pop("smoke", {})
    spec = {**raw, "spec": Path(path).name}
    default = spec.get("variant", "")
    variant = variant or default
    if variant not in (default, *variants):
        known = [v for v in (default, *variants) if v]
        raise UsageError(f"unknown --variant {variant!r} for {spec['spec']}; "
                         + (f"choose one of {', '.join(known)}" if known else "it has no variants"))
    spec.update(variants.get(variant, {}), variant=variant)
    spec.update(per_dataset.get(dataset, {}))
    if smoke:
        spec.update(smoke_table)
    for key, value in overrides.items():
        if key not in spec:
            raise UsageError(f"--{key.replace('_', '-')} does not apply to the {spec['protocol']} protocol "
                             f"({spec['spec']} has no {key!r})")
        spec[key] = value
    return spec


def paper_setup(protocol: str, dataset: str) -> dict[str, Any]:
    """The paper's arch, splits and image size for ``protocol`` on ``dataset`` ({} if the paper has none)."""
    try:
        spec = tomllib.loads(find_spec(protocol, dataset).read_text())
    except UsageError:
        return {}
    paper = spec.get("paper", {})
    return {k: v for k, v in paper.items() if k != "datasets"} if dataset in paper.get("datasets", []) else {}
