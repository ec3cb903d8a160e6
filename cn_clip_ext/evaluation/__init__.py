"""Zero-shot evaluation: datasets in their published layouts, prompt sets, scores, reports."""
from . import synfundus as _synfundus  # noqa: F401  (registers the "synfundus" reader)
from .datasets import READERS, DatasetSpec, EvalSet, load_dataset_table, load_eval_set
from .prompts import PromptSet, load_prompt_set
from .report import markdown_table, write_reports
from .scores import baselines, bootstrap, score
from .zero_shot import ZeroShotResult, encode_images, score_predictions, zero_shot

__all__ = [
    "READERS", "DatasetSpec", "EvalSet", "PromptSet", "ZeroShotResult", "baselines", "bootstrap",
    "encode_images", "load_dataset_table", "load_eval_set", "load_prompt_set", "markdown_table",
    "score", "score_predictions", "write_reports", "zero_shot",
]
