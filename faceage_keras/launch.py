"""The program that torchrun starts in every process of a distributed run.

`invoke train --nproc N` resolves the config once and then runs

    python -m torch.distributed.run --nproc-per-node N ... -m faceage_keras.launch --config-json '{...}'

Each process calls `faceage_keras.training.train` (or `resume_run`), which
joins the process group that torchrun describes in the environment.
"""

import argparse
import json
import sys


def build_parser():
    parser = argparse.ArgumentParser(prog="python -m faceage_keras.launch", description=__doc__.splitlines()[0])
    parser.add_argument("--config-json", help="The resolved TrainConfig as a JSON object (TrainConfig.to_dict).")
    parser.add_argument("--data", help="Data folder with labels.csv and images/.")
    parser.add_argument("--run-dir", help="Output folder; with --resume, the run folder to continue.")
    parser.add_argument("--resume", action="store_true", help="Continue the run in --run-dir from its checkpoint.")
    return parser


def main(argv=None):
    """Run one process's share of a training run; return the exit code."""
    args = build_parser().parse_args(argv)
    if args.resume == (args.config_json is not None):
        print("error: pass either --config-json or --resume with --run-dir.", file=sys.stderr)
        return 2

    import faceage_keras  # noqa: F401  (selects the Keras torch backend before Keras loads)
    from faceage_keras.checkpoint import ResumeError
    from faceage_keras.config import ConfigError, TrainConfig
    from faceage_keras.images import ImageReadError
    from faceage_keras.table import DataError
    from faceage_keras.training import resume_run, train

    try:
        if args.resume:
            resume_run(args.run_dir, data=args.data)
        else:
            train(TrainConfig(**json.loads(args.config_json)), data=args.data, run_dir=args.run_dir)
    except (ConfigError, DataError, ImageReadError, ResumeError, OSError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
