"""Summarise a py-spy ``--format raw`` profile (collapsed stacks): per thread kind, the functions with the
most samples, inclusive and self.

    python -m bench.profile.collapse controller-32.txt [--top 25] [--thread hub]
"""

from __future__ import annotations

import argparse
import collections
import re
import sys
from typing import Optional

# A stack belongs to the first of these whose marker appears in it.
KINDS = [
    ("hub", "Hub._run"),
    ("paramiko", "Transport.run"),
    ("grpc-worker", "_WorkerThread"),
    ("grpc-worker", "_worker (concurrent/futures/thread.py"),
    ("main", "<module>"),
    ("controller-watch", "watch_controller"),
]


def kind_of(stack: str) -> str:
    for kind, marker in KINDS:
        if marker in stack:
            return kind
    return "native/other"


def short(frame: str) -> str:
    frame = re.sub(r"0x[0-9a-f]+ ", "", frame)
    return re.sub(r" \((?:/[^)]*/)?(site-packages/)?", " (", frame)


def main(argv: Optional[list[str]] = None) -> int:
    p = argparse.ArgumentParser()
    p.add_argument("file")
    p.add_argument("--top", type=int, default=25)
    p.add_argument("--thread", default=None, help="only this thread kind")
    args = p.parse_args(argv)
    by_kind: dict[str, int] = collections.Counter()
    inclusive: dict[str, collections.Counter[str]] = collections.defaultdict(collections.Counter)
    selfs: dict[str, collections.Counter[str]] = collections.defaultdict(collections.Counter)
    total = 0
    with open(args.file) as f:
        for line in f:
            stack, _, count = line.rstrip("\n").rpartition(" ")
            if not count.isdigit():
                continue
            n = int(count)
            kind = kind_of(stack)
            if args.thread and kind != args.thread:
                continue
            total += n
            by_kind[kind] += n
            frames = [short(fr) for fr in stack.split(";")]
            for fr in set(frames):
                inclusive[kind][fr] += n
            selfs[kind][frames[-1]] += n
    print(f"{total} samples")
    for kind, n in by_kind.most_common():
        print(f"\n=== {kind}: {n} samples ({100 * n / total:.1f}%)")
        print("  inclusive:")
        for fr, c in inclusive[kind].most_common(args.top):
            print(f"    {100 * c / n:5.1f}%  {fr}")
        print("  self:")
        for fr, c in selfs[kind].most_common(args.top // 2):
            print(f"    {100 * c / n:5.1f}%  {fr}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
