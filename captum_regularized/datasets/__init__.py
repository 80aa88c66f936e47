"""Synthetic images with ground-truth evidence masks, and a loader for real image folders."""

from captum_regularized.datasets.image_folder import (
    ImageFolderWithMasks,
    collate_with_optional_masks,
)
from captum_regularized.datasets.shape_layout import ShapesLayout
from captum_regularized.datasets.shapes import SHAPE_NAMES
from captum_regularized.datasets.synthetic_shapes import SyntheticShapes

__all__ = [
    "SHAPE_NAMES",
    "ImageFolderWithMasks",
    "ShapesLayout",
    "SyntheticShapes",
    "collate_with_optional_masks",
]
