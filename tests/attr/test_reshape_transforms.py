"""Reshape transforms only select and rearrange tokens: checked against explicit loops."""

from __future__ import annotations

import pytest
import torch

from captum_regularized.attr import deit_tokens_to_map, swin_tokens_to_map, vit_tokens_to_map


def _loop_map(tokens: torch.Tensor, prefix: int, height: int, width: int) -> torch.Tensor:
    """``out[b, c, i, j] = tokens[b, prefix + i * width + j, c]``, entry by entry."""
    batch, _, channels = tokens.shape
    out = torch.empty(batch, channels, height, width)
    for b in range(batch):
        for c in range(channels):
            for i in range(height):
                for j in range(width):
                    out[b, c, i, j] = tokens[b, prefix + i * width + j, c]
    return out


@pytest.mark.parametrize(
    ("prefix", "grid"),
    [(1, (3, 3)), (0, (2, 2)), (5, (2, 2)), (1, (2, 4)), (3, (3, 1))],
    ids=["class-token", "no-prefix", "registers", "wide-grid", "tall-grid"],
)
def test_vit_tokens_to_map_matches_the_loop(prefix: int, grid: tuple[int, int]):
    height, width = grid
    tokens = torch.randn(2, prefix + height * width, 3)
    square = height == width
    kwargs = {"prefix_tokens": prefix} | ({} if square else {"grid": grid})
    got = vit_tokens_to_map(tokens, **kwargs)
    torch.testing.assert_close(got, _loop_map(tokens, prefix, height, width), rtol=0, atol=0)


def test_deit_drops_the_class_and_distillation_tokens():
    tokens = torch.randn(2, 2 + 4 * 4, 5)
    torch.testing.assert_close(deit_tokens_to_map(tokens), _loop_map(tokens, 2, 4, 4))
    wide = torch.randn(1, 2 + 2 * 3, 4)
    torch.testing.assert_close(deit_tokens_to_map(wide, grid=(2, 3)), _loop_map(wide, 2, 2, 3))


def test_swin_stage_moves_the_channels_first():
    stage = torch.randn(2, 3, 4, 5)  # (B, H, W, C)
    got = swin_tokens_to_map(stage)
    assert got.shape == (2, 5, 3, 4)
    for b in range(2):
        for c in range(5):
            for i in range(3):
                for j in range(4):
                    assert got[b, c, i, j] == stage[b, i, j, c]


def test_transforms_keep_gradients_routed_to_their_tokens():
    tokens = torch.randn(1, 2 + 9, 2, requires_grad=True)
    weights = torch.randn(1, 2, 3, 3)
    (deit_tokens_to_map(tokens) * weights).sum().backward()
    assert tokens.grad is not None
    assert torch.equal(tokens.grad[:, :2], torch.zeros(1, 2, 2))  # prefix tokens get nothing
    torch.testing.assert_close(tokens.grad[0, 2:], weights[0].flatten(1).T)


BAD = {
    "2-d": (lambda: vit_tokens_to_map(torch.zeros(4, 5)), r"\(batch, tokens, channels\)"),
    "4-d": (lambda: vit_tokens_to_map(torch.zeros(1, 4, 2, 2)), r"\(batch, tokens, channels\)"),
    "not-square": (lambda: vit_tokens_to_map(torch.zeros(1, 1 + 6, 4)), "grid=\\(h, w\\)"),
    "grid-mismatch": (
        lambda: vit_tokens_to_map(torch.zeros(1, 1 + 6, 4), grid=(2, 2)),
        r"grid=\(2, 2\) needs 4 patch tokens",
    ),
    "bad-grid": (lambda: vit_tokens_to_map(torch.zeros(1, 5, 4), grid=(4,)), "pair of positive"),
    "zero-grid": (lambda: vit_tokens_to_map(torch.zeros(1, 1, 4), grid=(0, 0)), "no patch"),
    "negative-prefix": (
        lambda: vit_tokens_to_map(torch.zeros(1, 5, 4), prefix_tokens=-1),
        "prefix_tokens",
    ),
    "only-prefix": (lambda: vit_tokens_to_map(torch.zeros(1, 2, 4), prefix_tokens=2), "no patch"),
    "deit-not-square": (lambda: deit_tokens_to_map(torch.zeros(1, 1 + 9, 4)), "perfect square"),
    "swin-3-d": (
        lambda: swin_tokens_to_map(torch.zeros(1, 16, 4)),
        r"\(batch, height, width, channels\)",
    ),
}


@pytest.mark.parametrize("case", list(BAD))
def test_wrong_layouts_are_a_value_error_naming_the_layout(case: str):
    call, match = BAD[case]
    with pytest.raises(ValueError, match=match):
        call()
