"""The command line: ``python -m daskcubes.workflow [COMMAND] [OPTIONS]``.

Parses arguments, loads the config, runs the stages, reports. Every setting of
:class:`~daskcubes.config.Config` is an option (``task_size`` is ``--task-size``).
"""

from __future__ import annotations

import argparse
import errno
import json
import math
import posixpath
import sys
import tempfile
import types
import typing
from collections.abc import Sequence
from contextlib import ExitStack
from dataclasses import asdict
from pathlib import Path
from typing import Any

from daskcubes import jobs
from daskcubes.api import repair
from daskcubes.config import ALIASES, Config, config_of
from daskcubes.errors import UserError
from daskcubes.io.layout import open_group, store_attrs
from daskcubes.io.schema import CubeSchema
from daskcubes.io.storage import Storage
from daskcubes.preview import draw_cube
from daskcubes.runtime.executors import dask_logs_to
from daskcubes.runtime.stages import RunResult, StageResult
from daskcubes.runtime.verify import verify_cube_store

#: Where dask's warnings go, unless ``--debug`` shows them.
DASK_LOG = str(Path(tempfile.gettempdir()) / "daskcubes-dask.log")

COMMANDS = {
    "run": "generate synthetic frames (if 'synthetic'), ingest them, cut cubes (the default)",
    "generate": "write synthetic frame files (parquet or CSV) into --frames",
    "ingest": "read frame files (--frames) into the zarr frames store (--frames-store)",
    "sample": "cut cubes from the frames store into the cube store (--out)",
    "info": "describe a frames store or a cube store",
    "verify": "check a cube store (every chunk's checksum) or a frames store; exit 1 if "
    "anything is wrong",
    "repair": "cut the damaged or missing cubes of a cube store again from its frames store",
    "preview": "draw one cube of a cube store as a PNG (slices through it, recipe in the title)",
}


#: What the value of a setting's option is, where VALUE says too little.
METAVARS = {"volumes": "DIR"}


def _add_setting(parser: argparse.ArgumentParser, name: str) -> None:
    field = Config.model_fields[name]
    flag = "--" + name.replace("_", "-")
    # An older name of the setting is an option too (--batch-size for --task-size).
    flags = [flag, *("--" + old.replace("_", "-") for old, new in ALIASES.items() if new == name)]
    default = field.get_default(call_default_factory=True)
    text = f"{field.description} (preset default: {default})"
    annotation = field.annotation
    args = typing.get_args(annotation)
    if typing.get_origin(annotation) is dict:
        parser.add_argument(
            *flags, dest=name, type=_json_object, default=None, metavar="JSON", help=text
        )
    elif any(typing.get_origin(arg) is dict for arg in args):  # a word, or a JSON object
        parser.add_argument(
            *flags, dest=name, type=_word_or_json, default=None, metavar="WORD|JSON", help=text
        )
    elif annotation is bool:
        parser.add_argument(
            *flags, dest=name, action=argparse.BooleanOptionalAction, default=None, help=text
        )
    elif typing.get_origin(annotation) is typing.Literal:
        parser.add_argument(*flags, dest=name, choices=args, default=None, help=text)
    elif annotation is int or (isinstance(annotation, types.UnionType) and int in args):
        parser.add_argument(*flags, dest=name, type=int, default=None, metavar="N", help=text)
    else:
        metavar = METAVARS.get(name, "VALUE")
        parser.add_argument(*flags, dest=name, default=None, metavar=metavar, help=text)


def _word_or_json(text: str) -> str | dict[str, Any]:
    """A setting's word (``windows``), or a JSON object (``{"a": 1}``)."""
    return _json_object(text) if text.lstrip().startswith("{") else text


def _json_object(text: str) -> dict[str, Any]:
    try:
        value = json.loads(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"not JSON ({exc})") from None
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError("expected a JSON object")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m daskcubes.workflow",
        description="Cut 3-D training cubes out of many 2-D frames with Dask and zarr.",
    )
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--debug", action="store_true", help="show tracebacks of errors, and dask's warnings"
    )
    reading = argparse.ArgumentParser(add_help=False)
    _add_setting(reading, "storage_options")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    for command, text in COMMANDS.items():
        inspects = command in ("info", "verify", "preview", "repair")
        parents = [common, reading] if inspects else [common]
        sub = commands.add_parser(command, help=text, description=text, parents=parents)
        if command == "info":
            sub.add_argument("store", help="path of a frames store or cube store")
            continue
        if command == "verify":
            sub.add_argument("store", help="path of a cube store")
            sub.add_argument(
                "--against",
                metavar="FRAMES_STORE",
                help="the frames store the cubes were cut from: recompute sampled cubes",
            )
            sub.add_argument(
                "--sample",
                type=_count,
                default=16,
                metavar="N",
                help="cubes to read, and with --against recompute: a number, or 'all' (default 16)",
            )
            sub.add_argument(
                "--shards",
                type=_count,
                default="all",
                metavar="N",
                help="shard files to read and check, chosen by --seed: a number for a quick "
                "look at a huge store, or 'all' (default)",
            )
            sub.add_argument(
                "--seed",
                type=int,
                default=0,
                metavar="N",
                help="seed of the choice of sampled cubes and shards (default 0)",
            )
            continue
        if command == "repair":
            sub.add_argument("store", help="path of a cube store")
            sub.add_argument(
                "--against",
                metavar="FRAMES_STORE",
                help="a copy of the frames store the cubes were cut from (default: the one "
                "the store records)",
            )
            sub.add_argument(
                "--break-lease",
                action="store_true",
                help="take over the store's lease at once (when its run is known dead)",
            )
            continue
        if command == "preview":
            sub.add_argument("store", help="path of a cube store")
            sub.add_argument("--cube", type=int, default=0, metavar="I", help="cube to draw")
            sub.add_argument("--png", required=True, metavar="FILE", help="PNG file to write")
            continue
        sub.add_argument(
            "--config",
            metavar="FILE",
            help="YAML preset: a file, or the name of one in conf/ (default: conf/default.yaml)",
        )
        for name in Config.model_fields:
            _add_setting(sub, name)
        existing = sub.add_mutually_exclusive_group()
        existing.add_argument(
            "--resume", action="store_true", help="finish the stores an interrupted run left"
        )
        existing.add_argument(
            "--overwrite", action="store_true", help="replace existing stores and frame files"
        )
        sub.add_argument("--quiet", action="store_true", help="no progress bar")
    return parser


def config_from_args(args: argparse.Namespace) -> Config:
    overrides = {name: getattr(args, name) for name in Config.model_fields}
    if args.frames is not None and args.synthetic is None:
        overrides["synthetic"] = False  # frames named on the command line are the user's data
    config = config_of(args.config, overrides, "command line")
    # A folder of volumes is its own option: --frames names one volume's store or files.
    if config.volumes is not None and args.frames is not None:
        given = "--volumes" if args.volumes is not None else "the preset's volumes"
        raise UserError(
            f"command line: --frames and {given} both name the data; give --frames for one "
            "volume (files or one store) or --volumes for a folder of volumes, not both"
        )
    if args.volumes is not None and args.synthetic:
        raise UserError(
            "command line: --synthetic generates frames, but --volumes names the data; "
            "leave out --synthetic"
        )
    return config


def describe_store(path: str, storage: Storage) -> list[str]:
    """Lines describing a frames store or cube store."""
    group = open_group(path, "store", storage)
    attrs = store_attrs(group)
    lines = [f"{path}: daskcubes {attrs.get('kind')} store, created {attrs.get('created')}"]
    for name, array in group.arrays():
        lines.append(f"  {name}: shape {array.shape}, {array.dtype}, chunks {array.chunks}")
    if "volumes" in attrs and attrs.get("kind") == "frames":
        lines.append("  volumes/<k>/<array>: each volume's frames and paired arrays")
    complete = attrs.get("complete")
    lines.append(f"  complete: {complete['finished'] if complete else 'no (run did not finish)'}")
    if attrs.get("kind") == "cubes":
        lines += _describe_plan(CubeSchema.from_attrs(attrs["plan"]))
        lines.append(f"  frames store: {attrs['frames_store']['path']}")
    elif "volumes" in attrs:
        pairs = ", ".join(f"{name} ({dtype})" for name, dtype in attrs["pairs"].items())
        lines.append(
            f"  {len(attrs['volumes'])} volumes; channels {', '.join(attrs['channels'])}; "
            f"paired arrays {pairs or 'none'}"
        )
        for k, volume in enumerate(attrs["volumes"]):
            arrays = [
                f"{name} {array['dtype']} from {_sources(array['sources'])}"
                for name, array in volume["arrays"].items()
            ]
            shape = " x ".join(map(str, volume["shape"]))
            lines.append(f"    {k} '{volume['name']}': {shape}, {arrays[0]}")
            lines += [f"      {array}" for array in arrays[1:]]
    else:
        sources = attrs["sources"]
        named = (
            f"{len(sources)} files" if all("path" in s for s in sources) else sources[0]["array"]
        )
        lines.append(f"  sources: {named}, columns {len(attrs['columns'])}")
    return lines


def _sources(sources: list[dict[str, Any]]) -> str:
    """Where an array of a frames store came from, as its attributes record it: frame
    files, a stored array (and its variable), or an array given in Python."""
    if sources and all("path" in s for s in sources):
        folder = posixpath.dirname(sources[0]["path"]) or "."
        return f"{len(sources)} files in '{folder}'"
    first = sources[0] if sources else {}
    if "array" not in first or "dask" in first:
        return str(first.get("array", "an array given in Python"))
    variable = f" variable '{first['variable']}'" if "variable" in first else ""
    return f"'{first['array']}'{variable}"


def _describe_plan(schema: CubeSchema) -> list[str]:
    """The plan of a cube store as a person reads it."""
    plan = schema.plan
    depth, height, width = plan.cube_shape
    grid = plan.definition.has_grid
    definition = ", ".join(
        f"{name} {str(value).lower()}"
        for name, value in asdict(plan.definition).items()
        # Settings only where they mean something: a grid's edge, a label volume's shares.
        if value not in (None, ())
        and (grid or name != "grid_edge")
        and (plan.definition.labels or name != "label_fraction")
    )
    article = " (the article's cubes)" if plan.definition.is_article else ""
    lines = [
        f"  plan: {plan.n_cubes} cubes of {depth} x {height} x {width} (frames x rows x columns), "
        f"{schema.dtype}, seed {plan.seed}",
        f"  definition: {definition}{article}",
    ]
    first = plan.first
    if grid and not schema.volumes:
        windows = " x ".join(map(str, first.grid_shape))
        lines.append(
            f"  grid: {windows} windows (frames x rows x columns), {math.prod(first.grid_shape)} "
            f"in all; cube i is window i in C order"
        )
    if not schema.volumes:
        lines.append(f"  cut from: {first.n_frames} frames of {first.n_rows} x {first.n_cols}")
    else:
        lines.append(
            f"  cut from: {len(schema.volumes)} volumes, shares {schema.volume_shares}"
            + (", windows of each volume's grid in turn" if grid else "")
        )
        lines += [
            f"    {k} '{record.name}': {' x '.join(map(str, record.shape))}, "
            + ("left out (too small for the cube)" if held is None else f"share {share:.3f}")
            for k, (record, share, held) in enumerate(
                zip(schema.volumes, plan.shares, plan.plans, strict=True)
            )
        ]
        if len(schema.channels) > 1:
            lines.append(f"  channels: {', '.join(schema.channels)}")
        if schema.pairs:
            pairs = ", ".join(f"{name} ({dtype})" for name, dtype in schema.pairs)
            lines.append(f"  paired arrays: {pairs}")
    return [
        *lines,
        f"  layout: {plan.shard_size} cubes a shard file, compressor {schema.compressor}, "
        f"recipe function {first.recipe}",
    ]


def _report(result: RunResult | StageResult) -> None:
    """A line per stage, and after cutting cubes (``run`` or ``sample``) the run's summary."""
    if isinstance(result, StageResult) and result.stage == "sample":
        result = RunResult([result])
    print(result)


def _count(text: str) -> int | str:
    """A positive number, or ``all``."""
    if text == "all":
        return text
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 0 or (value == 0 and text.strip() != "0"):
        raise argparse.ArgumentTypeError(f"{text!r}: expected a number or 'all'")
    return value


def _verify(args: argparse.Namespace) -> int:
    storage = Storage.of(args.storage_options)
    shards = None if args.shards == "all" else args.shards
    report = verify_cube_store(
        args.store, storage, args.against, args.sample, args.seed, shards=shards
    )
    for fact in report.facts:
        print(f"{args.store}: {fact}")
    for problem in report.problems:
        print(f"{args.store}: PROBLEM: {problem}")
    print(f"{args.store}: {len(report.problems) or 'no'} problems")
    if report.bad_shards or report.bad_recipe_blocks:
        print(
            f"{args.store}: 'python -m daskcubes.workflow repair {args.store}' cuts the bad "
            "cubes again from the frames store"
        )
    return 1 if report.problems else 0


def _dispatch(args: argparse.Namespace) -> int:
    if args.command == "info":
        print("\n".join(describe_store(args.store, Storage.of(args.storage_options))))
        return 0
    if args.command == "verify":
        return _verify(args)
    if args.command == "repair":
        print(repair(args.store, args.against, args.storage_options, args.break_lease))
        return 0
    if args.command == "preview":
        print(
            f"daskcubes: wrote {draw_cube(args.store, args.cube, args.png, args.storage_options)}"
        )
        return 0
    config = config_from_args(args)
    stage: Any = {
        "run": jobs.run,
        "generate": jobs.generate,
        "ingest": jobs.ingest,
        "sample": jobs.sample,
    }[args.command]
    mode = "resume" if args.resume else "overwrite" if args.overwrite else "new"
    _report(stage(config, mode=mode, show_progress=not args.quiet))
    return 0


def _describe_os_error(error: OSError) -> str:
    where = f"{error.filename}: " if error.filename else ""  # a file, or the store written
    text = f"{where}{error.strerror or error}"
    if error.errno == errno.ENOSPC:
        text += "; free some space, then run the same command with --resume to finish"
    return text


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; return the exit status."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] not in [*COMMANDS, "-h", "--help"]:
        argv.insert(0, "run")
    args = build_parser().parse_args(argv)
    args.command = args.command or "run"
    try:
        with ExitStack() as stack:
            if not args.debug:  # dask's warnings to a file; with --debug, to stderr
                stack.enter_context(dask_logs_to(DASK_LOG))
            return _dispatch(args)
    except UserError as error:
        if args.debug:
            raise
        print(f"daskcubes: error: {error}", file=sys.stderr)
        return 2
    except OSError as error:
        if args.debug:
            raise
        print(f"daskcubes: error: {_describe_os_error(error)}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(
            "daskcubes: interrupted; run the same command with --resume to finish",
            file=sys.stderr,
        )
        return 130


if __name__ == "__main__":
    sys.exit(main())
