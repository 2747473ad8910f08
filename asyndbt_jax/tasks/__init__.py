"""Real tasks: labelled text from the package registries or GLUE files, the paper's
few-shot splits, worker partitions and the PMI fragment vocabulary (issue 8)."""

from .data import GLUE, REGISTRY, LabelledData, data_dir, load_glue, prepare
from .splits import TaskSplit, paper_split, partition_workers, pmi_vocabulary

__all__ = ["GLUE", "REGISTRY", "LabelledData", "TaskSplit", "data_dir", "load_glue", "paper_split",
           "partition_workers", "pmi_vocabulary", "prepare"]
