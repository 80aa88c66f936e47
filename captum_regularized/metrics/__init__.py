"""Evaluation of attribution maps: faithfulness, localisation, sparsity (torch, batched).

Every metric returns per-example values of a batch (``.mean()`` is the papers' number);
:func:`evaluate_dataset` runs them over a ``DataLoader``, and
:mod:`~captum_regularized.metrics.torchmetrics` has them as ``torchmetrics.Metric`` objects.

=============================  ====================================================  ======
metric                         what it measures                                      better
=============================  ====================================================  ======
deletion_auc                   probability while top pixels are removed (RISE)       lower
insertion_auc                  probability while top pixels are put back (RISE)      higher
average_drop                   confidence lost on the map-masked image               lower
average_gain                   confidence gained on the map-masked image             higher
increase_in_confidence         share of images whose confidence rises when masked    higher
allegiance_deletion_auc        prediction kept while top pixels are deleted          lower
road (.combined)               LeRF minus MoRF score change, pixels imputed (ROAD)   higher
max_sensitivity                largest relative map change under input noise         lower
gini_sparseness                Gini index of the absolute map                        higher
pointing_game                  map maximum inside the object mask                    higher
energy_pointing_game           share of positive attribution inside the mask         higher
gradient_alignment             cosine of plain and guided-backprop gradients         higher
model_parameter_randomisation  map similarity after re-initialising layers           lower
data_randomisation             map similarity to a model trained on shuffled labels  lower
interpretation_attack          top-k overlap of the map kept under attack            higher
remove_and_retrain             DiffROAR: accuracy lost after retraining, vs random   higher
=============================  ====================================================  ======
"""

from captum_regularized.metrics.allegiance import (
    ALLEGIANCE_FRACTIONS,
    AllegianceCurve,
    allegiance_deletion_auc,
)
from captum_regularized.metrics.confidence_change import (
    ConfidenceChange,
    average_drop,
    average_gain,
    confidence_change,
    increase_in_confidence,
)
from captum_regularized.metrics.dataset_evaluation import (
    BUILTIN_METRICS,
    DatasetEvaluation,
    MetricBatch,
    evaluate_dataset,
    resolve_metrics,
)
from captum_regularized.metrics.deletion_insertion import (
    PerturbationCurve,
    deletion_auc,
    deletion_curve,
    insertion_auc,
    insertion_curve,
)
from captum_regularized.metrics.gradient_alignment import gradient_alignment
from captum_regularized.metrics.interpretation_attack import (
    InterpretationAttack,
    interpretation_attack,
)
from captum_regularized.metrics.parameter_randomisation import (
    MapSimilarity,
    ParameterRandomisation,
    data_randomisation,
    map_similarity,
    model_parameter_randomisation,
)
from captum_regularized.metrics.pointing_game import energy_pointing_game, pointing_game
from captum_regularized.metrics.remove_and_retrain import (
    ROAR_FRACTIONS,
    RemoveAndRetrain,
    remove_and_retrain,
)
from captum_regularized.metrics.road import (
    ROAD_PERCENTILES,
    ROADResult,
    noisy_linear_imputation,
    road,
    road_removal_counts,
)
from captum_regularized.metrics.sensitivity import max_sensitivity
from captum_regularized.metrics.sparseness import gini_sparseness

__all__ = [
    "ALLEGIANCE_FRACTIONS",
    "BUILTIN_METRICS",
    "ROAD_PERCENTILES",
    "ROAR_FRACTIONS",
    "AllegianceCurve",
    "ConfidenceChange",
    "DatasetEvaluation",
    "InterpretationAttack",
    "MapSimilarity",
    "MetricBatch",
    "ParameterRandomisation",
    "PerturbationCurve",
    "ROADResult",
    "RemoveAndRetrain",
    "allegiance_deletion_auc",
    "average_drop",
    "average_gain",
    "confidence_change",
    "data_randomisation",
    "deletion_auc",
    "deletion_curve",
    "energy_pointing_game",
    "evaluate_dataset",
    "gini_sparseness",
    "gradient_alignment",
    "increase_in_confidence",
    "insertion_auc",
    "insertion_curve",
    "interpretation_attack",
    "map_similarity",
    "max_sensitivity",
    "model_parameter_randomisation",
    "noisy_linear_imputation",
    "pointing_game",
    "remove_and_retrain",
    "resolve_metrics",
    "road",
    "road_removal_counts",
]
