"""Write a checkpoint's sampling part alone: its spec, EMA weights (with their sha256), epoch,
step and losses, without the raw weights and AdamW's state that only ``--resume`` needs.
A 10-epoch `blog` checkpoint goes from 26 MB to 6.5 MB: small enough to commit.

    python scripts/strip_checkpoint.py IN.pt OUT.pt

It prints OUT's sha256, and refuses to overwrite an existing OUT.
"""

import argparse
import hashlib
import sys
from pathlib import Path

from rfbench.train import CHECKPOINT_KEYS, load_model, read_checkpoint, write_checkpoint

KEEP = (*CHECKPOINT_KEYS, "format", "step", "ema_sha256")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("src", type=Path)
    ap.add_argument("dst", type=Path)
    args = ap.parse_args(argv)
    if args.dst.exists():
        print(f"strip_checkpoint: {args.dst} exists; not overwritten", file=sys.stderr)
        return 2
    ckpt = read_checkpoint(args.src)
    write_checkpoint(args.dst, {k: ckpt[k] for k in KEEP if k in ckpt})
    a, b = load_model(args.src), load_model(args.dst)  # the same model, and its hash checks
    if a.model_id != b.model_id or any(
        not x.equal(y) for x, y in zip(a.model.state_dict().values(), b.model.state_dict().values())
    ):
        print("strip_checkpoint: the stripped model differs from the source", file=sys.stderr)
        return 1
    print(hashlib.sha256(args.dst.read_bytes()).hexdigest(), args.dst, b.model_id)
    return 0


if __name__ == "__main__":
    sys.exit(main())
