"""Every chapter's protocol as one tested call.

``advlib.experiments.<chapter>.run(...)`` does what the chapter's Compute
section shows: it takes keyword parameters (the notebook's parameters cell
passes them on), computes, and returns a JSON-able dict with the numbers, the
per-image arrays the figures need, and ``"claims"``: for each claim the
chapter states, ``{"statement": ..., "holds": bool, ...the numbers it rests on}``.
The notebook saves that dict with its provenance; the claims tests recompute
each verdict from the saved numbers.

One module per chapter, named as the chapter's notebook; import the one you
need (``from advlib.experiments import deepfool_tables``): importing this
package loads none of them.
"""

CHAPTERS = (
    "deepfool_geometry",
    "deepfool_tables",
    "deepfool_finetuning",
    "perturbation_theory",
    "perturbation_losses",
    "adversarial_retraining",
    "blog_jsma_distillation",
    "blog_mutation_testing",
    "optimality",
    "peers",
)


def datasets(chapter: str, parameters: dict) -> set[str]:
    """The names of the data sets (as :func:`advlib.data.load` takes them) that
    ``chapter`` loads when run with the notebook ``parameters``: what the build
    provisions before the first notebook runs (``make data``). Every chapter
    module answers it with a function ``datasets(parameters) -> set[str]``."""
    module = chapter_module(chapter)
    if not hasattr(module, "datasets"):
        raise AttributeError(f"advlib.experiments.{chapter} must define datasets(parameters) -> set[str]")
    return set(module.datasets(parameters))


def chapter_module(chapter: str):
    """The module ``advlib.experiments.<chapter>``, imported."""
    import importlib

    if chapter not in CHAPTERS:
        raise ValueError(f"unknown chapter {chapter!r}; chapters: {', '.join(CHAPTERS)}")
    return importlib.import_module(f"{__name__}.{chapter}")
