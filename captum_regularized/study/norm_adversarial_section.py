"""Paper 4 (Gong, Dou & Farnia, arXiv 2404.04647): norm-regularized adversarial training."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from captum.attr import Saliency
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from captum_regularized.metrics import gini_sparseness, interpretation_attack, remove_and_retrain
from captum_regularized.models import train_classifier
from captum_regularized.study.map_scores import mask_scores
from captum_regularized.study.model_zoo import ADVERSARIAL_NORMS, TrainedModel
from captum_regularized.study.section import EvalBatch, Section, StudyContext
from captum_regularized.study.verdicts import Claim

__all__ = ["ROWS", "patch_norms", "run_norm_adversarial_section"]

PLAIN = "plain fine-tuning"

ROWS = {"simple_cnn_tuned": PLAIN, **{f"adv_{norm}": norm for norm in ADVERSARIAL_NORMS},
        "adv_gaze": "gaze"}
"""Zoo recipe to row name (SimpleCNNs fine-tuned from the same weights on the same batches)."""

TABLE = "SimpleCNN"


def patch_norms(gradient: torch.Tensor, patch: int) -> torch.Tensor:
    """L2 norm of the gradient over every ``patch x patch`` block (all channels; edge
    blocks hold the remainder).

    Examples
    --------
    >>> patch_norms(torch.ones(1, 1, 4, 4), 2).flatten().tolist()
    [2.0, 2.0, 2.0, 2.0]
    """
    energy = gradient.square().sum(dim=1, keepdim=True)
    sums = F.avg_pool2d(energy, patch, ceil_mode=True, divisor_override=1)
    return sums.sqrt()


def _new_section(group_size: int, roar_percent: float) -> Section:
    section = Section(
        key="norm_adversarial",
        title="Norm-regularized adversarial training (AdvGrad)",
        paper=4,
        citation='Gong, Dou & Farnia, "Structured gradient-based interpretations via '
        'norm-regularized adversarial training", arXiv 2404.04647',
        paper_claim="Adversarial training with an l1 or elastic-net cost gives sparser "
        "simple-gradient maps and a group-norm cost group-sparse ones; these maps find the "
        "informative pixels better (DiffROAR) and resist interpretation attacks better "
        "than those of standard training; the gaze cost aligns them with a given mask.",
        protocol="The trained SimpleCNN is fine-tuned with `NormRegularizedAdversarialLoss` "
        "(the authors' inner loop: 7 steps of 0.3 x the radius, projected on the box, "
        "the last iterate) for each norm, and with cross-entropy alone on the same batches "
        "(the plain twin, every claim's baseline). Map: the simple gradient |d logit of "
        "the label / d input|. Sparsity: Gini index of its pixels (l1, elastic net) and "
        f"of its {group_size} x {group_size}-patch L2 norms (group). DiffROAR: the top "
        f"{roar_percent:g} % of pixels of every training and held-out image, by each "
        "model's map, are set to the training mean, a fresh SimpleCNN is trained on them "
        "(`remove_and_retrain`; the random removal is the same for every model of a seed, "
        "so its retrained model is shared), and per held-out image DiffROAR = correct "
        "after random removal - correct after the map's removal. Interpretation attack: the top-k "
        "attack of `interpretation_attack` (k = 2 % of the pixels, radius "
        "`attack_epsilon`, `attack_steps` steps); score: the share of the top-k pixels "
        "kept. Gaze: share of |gradient| inside the ground-truth mask.",
    )
    section.metric_notes = {
        "gini": "Gini index of |gradient| (higher is sparser)",
        "patch_gini": "Gini index of the patch norms of the gradient (higher is "
        "group-sparser)",
        "diff_roar": "correct after random removal - correct after the map's removal "
        "(higher: the map finds the informative pixels)",
        "topk_kept": "share of the map's top-k pixels kept under the attack (higher is "
        "more robust)",
        "energy_in_mask": "share of |gradient| inside the mask (higher is better)",
        "correct": "held-out image classified correctly (its mean is the accuracy)",
    }
    for norm in ADVERSARIAL_NORMS:
        sparsity = "patch_gini" if norm == "group" else "gini"
        kind = "group-sparser" if norm == "group" else "sparser"
        section.claims += [
            Claim(4, f"{norm}: {kind} gradient maps than plain training", TABLE, PLAIN,
                  norm, sparsity, "higher"),
            Claim(4, f"{norm}: a larger DiffROAR than plain training", TABLE, PLAIN, norm,
                  "diff_roar", "higher"),
            Claim(4, f"{norm}: the map keeps more of its top-k pixels under attack", TABLE,
                  PLAIN, norm, "topk_kept", "higher"),
            Claim(4, f"{norm}: more gradient mass on the object", TABLE, PLAIN, norm,
                  "energy_in_mask", "higher", extra=True),
            Claim(4, f"{norm}: accuracy drops by at most 0.02", TABLE, PLAIN, norm,
                  "correct", "higher", margin=0.02, extra=True),
        ]
    section.claims.append(Claim(4, "gaze: more gradient mass inside the mask", TABLE, PLAIN,
                                "gaze", "energy_in_mask", "higher"))
    return section


class _DiffRoar:
    """Per-image DiffROAR of one seed's models; the random removal, the same for every
    model of a seed, is retrained once."""

    def __init__(self, context: StudyContext, batch: EvalBatch) -> None:
        s = context.settings
        self.context, self.seed = context, batch.seed
        train_set = context.data.for_seed(batch.seed).train_set
        images, labels = train_set.tensors[:2]  # type: ignore[attr-defined]
        order = torch.randperm(len(images), generator=torch.Generator().manual_seed(batch.seed))
        chosen = order[: s.roar_train_samples]
        self.train_loader = DataLoader(TensorDataset(images[chosen], labels[chosen]),
                                       batch_size=s.batch_size)
        self.test_loader = DataLoader(TensorDataset(batch.images.cpu(), batch.labels.cpu()),
                                      batch_size=s.batch_size)
        self.seen: dict[tuple[int, float], nn.Module] = {}

    def __call__(self, trained: TrainedModel) -> torch.Tensor:
        """Per held-out image: correct after random removal - correct after the map's."""
        s = self.context.settings
        result = remove_and_retrain(
            self._retrained, self.train_loader, self.test_loader, Saliency(trained.model),
            (100 * s.roar_fraction,), model=trained.model, seed=self.seed,
            device=self.context.device, progress=False, attribute_kwargs={"abs": True},
        )
        assert result.correct is not None and result.random_correct is not None
        return result.random_correct[0].double() - result.correct[0].double()

    def _retrained(self, loader: DataLoader) -> nn.Module:
        data = loader.dataset
        count = len(data)  # type: ignore[arg-type]
        probe = torch.stack([data[i][0] for i in range(0, count, max(1, count // 64))])
        key = (count, float(probe.double().sum()))
        if key not in self.seen:
            s = self.context.settings
            fresh = self.context.zoo.fresh("simple_cnn", self.seed)
            torch.manual_seed(self.seed)
            train_classifier(fresh, data, epochs=s.roar_epochs, batch_size=s.batch_size,
                             lr=s.lr, device=self.context.device, progress=False,
                             seed=self.seed)
            self.seen[key] = fresh.eval()
        return self.seen[key]


def _topk_kept(context: StudyContext, trained: TrainedModel, batch: EvalBatch) -> torch.Tensor:
    s, count = context.settings, context.settings.attack_examples
    result = interpretation_attack(
        trained.model, batch.images[:count], batch.labels[:count],
        epsilon=s.attack_epsilon, steps=s.attack_steps, input_range=(0.0, 1.0),
    )
    return result.intersection.double()


def run_norm_adversarial_section(context: StudyContext) -> Section:
    """Measure the plain twin and the four AdvGrad models on every seed; draw the maps.

    Examples
    --------
    >>> from captum_regularized.study.runner import tiny_context
    >>> section = run_norm_adversarial_section(tiny_context())
    >>> sorted(section.tables["SimpleCNN"])
    ['elastic_net', 'gaze', 'group', 'l1', 'plain fine-tuning']
    >>> len(section.verdicts())
    16
    """
    s = context.settings
    section = _new_section(s.adv_group_size, 100 * s.roar_fraction)
    context.note_missing_masks(section)
    figure_maps: dict[str, torch.Tensor] = {}
    for batch in context.eval_batches():
        images, labels = batch.images, batch.labels
        diff_roar = _DiffRoar(context, batch)
        for recipe, row in ROWS.items():
            if row == "gaze" and not context.data.has_masks:
                continue  # the gaze loss trains on the masks
            trained = context.zoo.get(recipe, batch.seed)
            context.log(f"AdvGrad: scoring {row} (seed {batch.seed})")
            section.uses(TABLE, row, trained)
            gradient = Saliency(trained.model).attribute(images, target=labels, abs=True).detach()
            scores = {
                "correct": trained.correct.double(),
                "gini": gini_sparseness(gradient).double(),
                "patch_gini": gini_sparseness(patch_norms(gradient, s.adv_group_size)).double(),
            }
            if batch.masks is not None:
                scores["energy_in_mask"] = mask_scores(gradient, batch.masks)["energy_in_mask"]
            if row != "gaze":
                scores["diff_roar"] = diff_roar(trained)
                scores["topk_kept"] = _topk_kept(context, trained, batch)
            for metric, values in scores.items():
                section.record(TABLE, row, metric, values)
            if batch.first:
                figure_maps[row] = gradient[: s.figure_rows]
    context.save_maps(section, "norm_adversarial_examples", figure_maps,
                      "|simple gradient| of every model")
    return section
