"""Validate an Axolotl config with Axolotl's own schema (runs in the *train* environment).

Axolotl's validator silently drops keys it does not know (`lora_targt_modules` passes), so
we first check every key against the schema's field names and aliases ourselves.

    python -m experiments.train.axolotl_validate results/<run>/axolotl.yaml --capabilities '{"bf16": false, ...}'
Exit code 2 and one line per problem on stderr when the config is invalid.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import yaml


def known_keys(model_cls) -> set[str]:
    keys = set()
    for name, field in model_cls.model_fields.items():
        keys.add(name)
        for alias in (field.alias, field.validation_alias, field.serialization_alias):
            if isinstance(alias, str):
                keys.add(alias)
    return keys


def unknown_keys(cfg: dict, schema_cls, dataset_cls) -> list[str]:
    """Top-level and per-dataset keys that Axolotl's schema does not know."""
    problems = [f"axolotl.{k}" for k in cfg if k not in known_keys(schema_cls)]
    ds_keys = known_keys(dataset_cls)
    for i, ds in enumerate(cfg.get("datasets") or []):
        problems += [f"axolotl.datasets[{i}].{k}" for k in ds if k not in ds_keys]
    return problems


def validate(cfg: dict, capabilities: dict | None, world_size: int = 1) -> dict:
    """Return Axolotl's normalised config; raise ValueError naming the keys at fault."""
    import torch
    from axolotl.utils.config import prepare_plugins, validate_config
    from axolotl.utils.dict import DictDefault
    from axolotl.utils.schemas.config import AxolotlInputConfig
    from axolotl.utils.schemas.datasets import SFTDataset

    unknown = unknown_keys(cfg, AxolotlInputConfig, SFTDataset)
    if unknown:
        raise ValueError("unknown Axolotl key(s): " + ", ".join(unknown))
    dd = DictDefault(json.loads(json.dumps(cfg)))
    prepare_plugins(dd)
    caps = env_caps = None
    if capabilities is not None:
        caps = {**capabilities, "n_gpu": world_size}
        env_caps = {"torch_version": torch.__version__.split("+", 1)[0]}
    try:
        return dict(validate_config(dd, capabilities=caps, env_capabilities=env_caps))
    except Exception as exc:  # pydantic ValidationError or Axolotl's ValueError
        raise ValueError(format_validation_error(exc)) from None


def format_validation_error(exc: Exception) -> str:
    errors = getattr(exc, "errors", None)
    if callable(errors):
        lines = []
        for err in errors():
            loc = ".".join(str(p) for p in err.get("loc", ()) if p != "__root__")
            lines.append(f"axolotl.{loc}: {err.get('msg')}" if loc else str(err.get("msg")))
        return "; ".join(lines)
    return str(exc)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("configs", type=Path, nargs="+", help="one or more axolotl.yaml files")
    ap.add_argument("--capabilities", default=None, help="JSON dict; omit to probe this machine")
    ap.add_argument("--world-size", type=int, default=1)
    args = ap.parse_args(argv)
    caps = json.loads(args.capabilities) if args.capabilities else None
    failed = 0
    for path in args.configs:  # one process for many files: importing axolotl costs ~10 s
        try:
            validate(yaml.safe_load(path.read_text()), caps, args.world_size)
            print(f"{path}: valid (Axolotl schema)")
        except ValueError as exc:
            print(f"{path}: invalid Axolotl config: {exc}", file=sys.stderr)
            failed += 1
    return 2 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
