"""roiops-bench: the benchmark command line.

    roiops-bench                 # = roiops-bench speed: the standard speed cases against every peer
    roiops-bench speed [--full] [--dtypes bfloat16] [--sweep] [--device cuda] [--json out.json]
    roiops-bench misalign [--quick] [--out DIR] [--json out.json]
    roiops-bench pooler [--repeats N] [--json out.json]   # FPN pooling against torchvision's pooler
    roiops-bench info            # how roiops was built

Also runnable from a checkout as `python -m roiops.bench`.
"""

import argparse
import sys

from . import pooler, speed


def _info(_args) -> int:
    import torch

    import roiops

    info = roiops.build_info()
    print(f"roiops {info['version']}  (CUDA kernels compiled: {info['with_cuda']})")
    print(
        f"torch {torch.__version__}, CUDA device available: {torch.cuda.is_available()}, "
        f"CPU threads: {torch.get_num_threads()}"
    )
    print("ops:", ", ".join(f"roiops::{name}" for name in info["ops"]))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="roiops-bench", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command")
    p = sub.add_parser("speed", help="time roiops against torchvision and the pure-PyTorch reference")
    speed.add_arguments(p)
    p.set_defaults(run=speed.run)
    try:
        from . import misalign
    except ImportError as e:  # the misalignment suite needs the optional bench extras
        p = sub.add_parser("misalign", help=f"(unavailable: {e})")
        p.set_defaults(run=lambda _a, e=e: print(f"misalign needs: pip install 'roiops[bench]' ({e})") or 2)
    else:
        p = sub.add_parser("misalign", help="measure what RoIPool's quantization costs, from pixels to mask AP")
        misalign.add_arguments(p)
        p.set_defaults(run=misalign.run)
    p = sub.add_parser("pooler", help="FPN pooling (MultiScaleRoIAlign) against torchvision's pooler")
    pooler.add_arguments(p)
    p.set_defaults(run=pooler.run)
    p = sub.add_parser("info", help="how roiops was built")
    p.set_defaults(run=_info)
    return parser


def main(argv=None) -> int:
    parser = build_parser()
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0].startswith("-") and argv[0] not in ("-h", "--help"):
        argv = ["speed", *argv]
    args = parser.parse_args(argv)
    return args.run(args)


if __name__ == "__main__":
    sys.exit(main())
