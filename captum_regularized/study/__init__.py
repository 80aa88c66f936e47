"""The reproduction study behind ``captum-regularized reproduce``.

One module per paper section, a shared model zoo (each model trained once per seed),
a stated verdict rule (:mod:`~captum_regularized.study.verdicts`) and the report writer.
"""

from captum_regularized.study.runner import SECTIONS, run_study
from captum_regularized.study.settings import FULL, QUICK, TINY, StudySettings
from captum_regularized.study.verdicts import Claim, ClaimVerdict, judge, spread

__all__ = ["FULL", "QUICK", "SECTIONS", "TINY", "Claim", "ClaimVerdict", "StudySettings", "judge",
           "run_study", "spread"]
