"""Train the offline classifier of a dataset and copy it into rfbench/metrics/pinned/.

    python scripts/pin_classifier.py fashion-mnist

It trains exactly as ``rfbench run`` would on first use (classifier.get_classifier, in an
empty cache), then prints the file name and sha256 to add to ``PINNED`` in
rfbench/metrics/classifier.py. The committed Fashion-MNIST classifier was made this way on
a 2-core CPU (test accuracy 0.9149, sha256 426cd998...).
"""

from __future__ import annotations

import argparse
import hashlib
import os
import shutil
import sys
import tempfile
from pathlib import Path


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("dataset")
    p.add_argument("--data-root", default=None)
    args = p.parse_args(argv)
    with tempfile.TemporaryDirectory() as cache:
        os.environ["RFBENCH_CACHE"] = cache
        from rfbench.data import load_split
        from rfbench.metrics import classifier

        train = load_split(args.dataset, "train", args.data_root)
        test = load_split(args.dataset, "test", args.data_root)
        target = classifier.PINNED_DIR / classifier.classifier_path(train).name
        classifier.PINNED.pop(target.name, None)  # train it afresh
        info = classifier.get_classifier(train, test, progress=True)
        target.parent.mkdir(exist_ok=True)
        shutil.copyfile(info.path, target)
    sha = hashlib.sha256(Path(target).read_bytes()).hexdigest()
    print(f'"{target.name}": "{sha}",  # test accuracy {info.test_accuracy:.4f}')
    return 0


if __name__ == "__main__":
    sys.exit(main())
