"""Rendering speed of SyntheticShapes: images/s and the time for 10,000 64x64 images.

Run: ``python benchmarks/bench_datasets.py [--threads 2]`` (a measurement, not a test).
"""

from __future__ import annotations

import argparse
import time

import torch

from captum_regularized.datasets import SyntheticShapes


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--num-samples", type=int, default=10_000)
    parser.add_argument("--chunk-size", type=int, default=None, help="default: automatic")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    for size in (32, 64):
        data = SyntheticShapes(args.num_samples, image_size=size)
        data.render(range(8))  # warm-up
        start, cpu = time.perf_counter(), time.process_time()
        data.tensors(chunk_size=args.chunk_size)
        wall, cpu = time.perf_counter() - start, time.process_time() - cpu
        print(
            f"{args.num_samples} images of {size}x{size}: {wall:.2f} s wall "
            f"({cpu:.2f} s CPU), {args.num_samples / wall:,.0f} images/s"
        )


if __name__ == "__main__":
    main()
