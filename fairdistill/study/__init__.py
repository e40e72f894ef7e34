"""The study: does counterfactual role reversal make a smaller distilled student fairer, and at what cost?

A study recipe (``recipes/study-*.yaml``, :mod:`.spec`) names a design, a primary measure and a success
rule before anything runs; :mod:`.runner` trains a shared starting point and every arm with every seed
(resumable; one offline teacher pass per distinct data and token swap); :mod:`.measure` scores each model
into a compact record; :mod:`.stats` computes every measure per seed and compares arms over seeds;
:mod:`.report` writes ``report.md``, ``results.json`` and the plots -- from the records alone, so
``--report-only`` rebuilds a committed report from the repository.

    python recipes/study.py --config recipes/study-cpu-v2.yaml [--report-only] [-- --use_cpu true]
"""

from .spec import EvalSpec, StudyError, StudySpec, load_spec

__all__ = ["EvalSpec", "StudyError", "StudySpec", "load_spec"]
