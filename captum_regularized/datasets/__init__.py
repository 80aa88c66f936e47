"""Synthetic images with ground-truth evidence masks, and loaders for real images."""

from captum_regularized.datasets.fashion_mnist import FashionMNISTWithMasks
from captum_regularized.datasets.image_folder import (
    ImageFolderWithMasks,
    collate_with_optional_masks,
)
from captum_regularized.datasets.shape_layout import ShapesLayout
from captum_regularized.datasets.shapes import SHAPE_NAMES
from captum_regularized.datasets.synthetic_shapes import SyntheticShapes

__all__ = ["SHAPE_NAMES", "FashionMNISTWithMasks", "ImageFolderWithMasks", "ShapesLayout",
           "SyntheticShapes", "collate_with_optional_masks"]
