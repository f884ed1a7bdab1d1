"""Research studies built from the library's parts: each is a function that runs (or resumes)
every arm over seeds and returns a result with tables and plots.

- :func:`transition_study`: 16-bit -> 1.58-bit continual QAT (arXiv 2502.11895).
- :func:`lessismore_findings`, :func:`lessismore_report`: "Less is more" (arXiv 2512.18934)'s
  findings checked on a precision x replay x seed sweep's saved results, with verdicts.
- :func:`ptq_dynamics_study`, :func:`ptq_continual_study`: training dynamics and PTQ robustness
  (arXiv 2510.06213), in pre-training and along a continual LoRA sequence.
- :func:`paired_contrasts`: a study's family of per-seed paired contrasts, adjusted for
  multiplicity, each labelled by a rule (``reproduced``, ``consistent with``, ``contradicted``,
  ``cannot tell``).

Examples:
    >>> from quantcl.studies import transition_variants
    >>> len(transition_variants())  # float, ternary, 3 switch points x keep/reset x step/linear
    14
"""

from __future__ import annotations

from quantcl.studies._curves import HeldOutLoss, loss_spike
from quantcl.studies._lessismore_report import lessismore_report, mean_matrices, metrics_table, plot_mean_matrices
from quantcl.studies._ptq_report import PTQContinualResult, PTQDynamicsResult
from quantcl.studies._ptq_report import ptq_contrasts
from quantcl.studies._runs import load_study, save_study_records
from quantcl.studies._transition_report import TransitionStudyResult, transition_contrasts
from quantcl.studies.contrasts import LABEL_RULES, Contrast, ContrastResult, contrast_label, paired_contrasts
from quantcl.studies.lessismore_check import Finding, lessismore_findings, welch_interval
from quantcl.studies.lessismore_confirm import ENDPOINTS, Endpoint, confirmatory_findings, confirmatory_table, replay_dose
from quantcl.studies.ptq_dynamics import PTQArm, ptq_continual_study, ptq_dynamics_study
from quantcl.studies.transition import TransitionVariant, transition_study, transition_variants

__all__ = ["transition_study", "transition_variants", "TransitionVariant", "TransitionStudyResult", "HeldOutLoss",
           "loss_spike", "ptq_dynamics_study", "ptq_continual_study", "PTQArm", "PTQDynamicsResult",
           "PTQContinualResult", "Finding", "lessismore_findings", "lessismore_report", "welch_interval",
           "mean_matrices", "plot_mean_matrices", "metrics_table", "Endpoint", "ENDPOINTS", "confirmatory_findings",
           "confirmatory_table", "replay_dose", "transition_contrasts", "Contrast", "ContrastResult", "paired_contrasts",
           "contrast_label", "LABEL_RULES", "ptq_contrasts", "load_study", "save_study_records"]
