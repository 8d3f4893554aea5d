"""pconv-nas: hardware-aware search over FasterNet-style PConv networks.

    python search.py --device arm                     # search; results/<run>/
    python search.py devices                          # the latency tables
    python search.py show results/<run>               # regenerate a run's files from study.db
    python search.py export results/<run> --pick knee --out arch.yaml [--onnx model.onnx]
    python search.py export arch.yaml --runtime executorch --out model.pte   # deployment file
    python search.py train arch.yaml --epochs 10       # train it; a checkpoint timm loads

This file only parses arguments, calls into the packages and prints. Bad input exits
with code 2 and a one-line error.
"""

from __future__ import annotations

import sys

from optimize import cli


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    commands = {"devices": cli.cmd_devices, "show": cli.cmd_show, "export": cli.cmd_export,
                "train": cli.cmd_train}
    try:
        if argv and argv[0] in commands:
            parser = cli.subcommand_parser(argv[0])
            return commands[argv[0]](parser.parse_args(argv[1:]))
        return cli.cmd_search(cli.search_parser().parse_args(argv), argv)
    except cli.UsageError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("\ninterrupted: finished trials are in the run's study.db; continue with --resume",
              file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
