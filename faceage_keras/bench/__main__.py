"""Command line of the benchmark: `python -m faceage_keras.bench --help`."""

import argparse
import logging
import os
import shlex
import sys

from faceage_keras.bench.suite import (
    DEFAULT_BACKBONES,
    DEFAULT_IMAGE_SIZES,
    BenchOptions,
    MeasurementError,
    failed_measurements,
    write_report,
)

DEFAULT_OUT = "docs/benchmarks.md"


def _names(text):
    return tuple(name.strip() for name in text.split(",") if name.strip())


def _sizes(text):
    return tuple(int(size) for size in _names(text))


def parse_args(argv):
    parser = argparse.ArgumentParser(prog="python -m faceage_keras.bench", description=__doc__)
    parser.add_argument("--out", default=DEFAULT_OUT, help=f"Markdown report file (default: {DEFAULT_OUT}).")
    parser.add_argument("--quick", action="store_true", help="Few steps, batch 8 and 40 faces: checks that every measurement runs.")
    parser.add_argument("--data", default=os.environ.get("FACEAGE_DATA"), help="Data folder with labels.csv and images/ (default: $FACEAGE_DATA).")
    parser.add_argument("--run", help="Folder of a trained run; its best model is scored in the prediction comparison.")
    parser.add_argument("--backbones", type=_names, default=DEFAULT_BACKBONES, help="Comma-separated timm model names.")
    parser.add_argument("--sizes", type=_sizes, default=DEFAULT_IMAGE_SIZES, help="Comma-separated image sides in pixels.")
    parser.add_argument("--batch-size", type=int, help="Images per training step (default 64, quick 8).")
    parser.add_argument("--warmup", type=int, help="Untimed steps before the timed ones (default 3, quick 2).")
    parser.add_argument("--steps", type=int, help="Timed steps per measurement (default 20, quick 3).")
    parser.add_argument("--faces", type=int, help="Faces of the prediction comparison (default 500, quick 40).")
    parser.add_argument("--threads", type=int, help="torch intra-op threads per measurement (default: torch's choice).")
    parser.add_argument("--repeats", type=int, help="Alternating runs of each training measurement, median reported (default 3, quick 1).")
    parser.add_argument("--timeout", type=float, default=1800.0, help="Seconds one measurement may take (default 1800).")
    return parser.parse_args(argv)


def options_from_args(args):
    """Build `BenchOptions` from parsed arguments; options left out take the defaults of the mode."""
    settings = {"data": args.data or None, "run": args.run or None, "backbones": args.backbones, "image_sizes": args.sizes,
                "threads": args.threads, "timeout": args.timeout}  # fmt: skip
    for name in ("batch_size", "warmup", "steps", "faces", "repeats"):
        if getattr(args, name) is not None:
            settings[name] = getattr(args, name)
    return BenchOptions.quick(**settings) if args.quick else BenchOptions(**settings)


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    args = parse_args(argv)
    try:
        options = options_from_args(args)
        report, results = write_report(options, args.out, "python -m faceage_keras.bench " + shlex.join(argv))
    except (ValueError, FileNotFoundError, MeasurementError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(report)
    print(f"Report written to {args.out}, raw results next to it as JSON.", file=sys.stderr)
    failed = failed_measurements(results)
    if failed:
        print(f"error: {len(failed)} measurement(s) failed; see the end of the report.", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
