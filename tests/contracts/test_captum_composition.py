"""Contract: our attribution classes compose with Captum as its own methods do.

``NoiseTunnel`` wraps every class that claims it (and with zero noise gives the plain
result), ``captum.metrics.infidelity`` scores every input attribution, tuple inputs give
tuple outputs, and a claimed convergence delta is ``(B,)`` and the same whichever way
it is asked for.
"""

from __future__ import annotations

import pytest
import torch
from captum.attr import NoiseTunnel
from captum.metrics import infidelity

from tests.contracts.registry import (
    BATCH,
    Entry,
    TwoInputNet,
    make_batch,
    make_model,
    select,
)
from tests.model_checks import untouched


def _wrapped(entry: Entry, model):
    assert entry.method is not None
    return entry.method(model)


@pytest.mark.parametrize("entry", select(lambda e: e.noise_tunnel))
@pytest.mark.parametrize("mode", ["eval", "train"])
def test_noise_tunnel_wraps_it(entry: Entry, mode: str):
    model, batch = make_model().train(mode == "train"), make_batch()
    kwargs = entry.attribute_kwargs or {}
    plain = _wrapped(entry, model).attribute(batch.inputs, target=batch.labels, **kwargs)
    with untouched(model, batch.inputs):
        tunnel = NoiseTunnel(_wrapped(entry, model))
        noiseless = tunnel.attribute(batch.inputs, nt_type="smoothgrad", nt_samples=3,
                                     nt_samples_batch_size=1, stdevs=0.0,
                                     target=batch.labels, **kwargs)
        noisy = tunnel.attribute(batch.inputs, nt_type="smoothgrad_sq", nt_samples=3,
                                 stdevs=0.1, target=batch.labels, **kwargs)
    if mode == "eval":  # train-mode BatchNorm makes each sub-batch its own model
        torch.testing.assert_close(noiseless, plain, rtol=1e-4, atol=1e-6)
    assert noisy.shape == plain.shape and torch.isfinite(noisy).all()


@pytest.mark.parametrize("entry", select(lambda e: e.infidelity))
def test_captum_infidelity_scores_it(entry: Entry):
    model, batch = make_model(), make_batch()
    maps = _wrapped(entry, model).attribute(batch.inputs, target=batch.labels)

    def perturb(inputs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        noise = 0.01 * torch.randn_like(inputs)
        return noise, inputs - noise

    score = infidelity(model, perturb, batch.inputs, maps, target=batch.labels, n_perturb_samples=2)
    assert score.shape == (BATCH,) and torch.isfinite(score).all()


LAYER_MAPS = ("LayerRSIGradCam", "LayerGradCamPlusPlus", "LayerScoreCam")


@pytest.mark.parametrize("entry", select(lambda e: e.tuple_inputs))
def test_tuple_inputs_give_the_composed_models_answer(entry: Entry):
    """``TwoInputNet(a, b) = net(a + b/2)``: both inputs see the gradient at ``a + b/2``."""
    two = TwoInputNet().eval()
    two.net.load_state_dict(make_model().state_dict())
    batch = make_batch()
    a, b = batch.inputs, torch.rand_like(batch.inputs)
    kwargs = entry.attribute_kwargs or {}
    got = _wrapped(entry, two).attribute((a, b), target=batch.labels, **kwargs)
    single = _wrapped(entry, two.net).attribute(a + 0.5 * b, target=batch.labels, **kwargs)
    if entry.name in LAYER_MAPS:  # a layer map: one tensor, whatever the inputs
        torch.testing.assert_close(got, single, rtol=1e-4, atol=1e-6)
        return
    assert isinstance(got, tuple) and len(got) == 2
    torch.testing.assert_close(got[0], single, rtol=1e-4, atol=1e-6)
    # every signed map is positively homogeneous in the gradient: halving it halves the map
    torch.testing.assert_close(got[1], 0.5 * single, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("entry", select(lambda e: e.convergence_delta))
def test_convergence_delta(entry: Entry):
    model, batch = make_model(), make_batch()
    method = _wrapped(entry, model)
    assert method.has_convergence_delta()
    kwargs = entry.attribute_kwargs or {}
    _, delta = method.attribute(batch.inputs, target=batch.labels,
                                return_convergence_delta=True, **kwargs)
    assert delta.shape == (BATCH,) and torch.isfinite(delta).all()
    alone = [method.attribute(batch.inputs[i:i + 1], target=int(batch.labels[i]),
                              return_convergence_delta=True, **kwargs)[1] for i in range(BATCH)]
    torch.testing.assert_close(delta, torch.cat(alone), rtol=1e-4, atol=1e-6)
    _, tunnel_delta = NoiseTunnel(method).attribute(
        batch.inputs, nt_samples=2, stdevs=0.0, target=batch.labels,
        return_convergence_delta=True, **kwargs
    )
    torch.testing.assert_close(tunnel_delta, delta.repeat_interleave(2), rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("entry", select(lambda e: e.kind == "attribution" and e.method))
def test_captum_flags_are_booleans(entry: Entry):
    method = _wrapped(entry, make_model())
    assert method.has_convergence_delta() is entry.convergence_delta
    assert isinstance(method.multiplies_by_inputs, bool)
