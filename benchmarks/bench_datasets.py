"""Rendering speed of SyntheticShapes: images per second and the time for 10,000 images.

The foundation issue asks for 10,000 images of 64x64 in under 5 s on 2 CPU cores. This
script renders that set with ``SyntheticShapes.tensors`` (automatic chunk size) and
prints the median wall time of ``--repeats`` runs, plus rows for other sizes. As a peer
it times torchvision's ``FakeData`` (random noise images, no masks, PIL per item) for
the same count: the cost of the simplest per-item synthetic data set.

Run ``python benchmarks/bench_datasets.py [--device auto|cpu|cuda] [--quick]``.
"""

from __future__ import annotations

import argparse

import _measure as measure
import torch
import torchvision

from captum_regularized.datasets import SyntheticShapes


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    measure.add_device_argument(parser)
    parser.add_argument("--quick", action="store_true", help="one repeat, one size")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    device = measure.select_device(args.device)
    repeats = 1 if args.quick else args.repeats
    print(f"device={device} threads={torch.get_num_threads()} repeats={repeats} (median)")

    sizes = [(10_000, 64)] if args.quick else [(10_000, 32), (10_000, 64), (1_000, 224)]
    for count, size in sizes:
        shapes = SyntheticShapes(num_samples=count, image_size=size, seed=0)
        to_tensor = torchvision.transforms.PILToTensor()
        fake = torchvision.datasets.FakeData(count, (3, size, size), transform=to_tensor)
        rows = measure.measured_rows(
            {
                "SyntheticShapes": lambda shapes=shapes: shapes.tensors(device=device),
                "FakeData": lambda fake=fake: torch.stack([fake[i][0] for i in range(len(fake))]),
            },
            device,
            repeats,
            memory=False,
        )
        measure.print_table(rows, ["FakeData"], label=f"{count} images of {size}x{size}")
        seconds = rows["SyntheticShapes"].seconds
        print(f"SyntheticShapes: {seconds:.2f} s, {count / seconds:,.0f} images/s\n")


if __name__ == "__main__":
    main()
