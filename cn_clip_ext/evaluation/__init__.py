"""Zero-shot, linear-probe and k-shot evaluation: dataset readers, prompt ensembles, scores, reports."""
from . import flair_lists as _flair_lists  # noqa: F401  (registers the "flair_csv" reader)
from . import synfundus as _synfundus  # noqa: F401  (registers the "synfundus" reader)
from . import published as _published  # noqa: F401  (registers the published-layout readers)
from .datasets import READERS, DatasetSpec, EvalSet, load_dataset_table, load_eval_set
from .probe import KShotResult, ProbeSplit, k_shot, linear_probe, probe_split
from .prompts import PromptSet, load_prompt_set
from .report import kshot_table, markdown_table, write_reports
from .scores import baselines, bootstrap, score
from .synfundus import synfundus_label_classes
from .zero_shot import ClassEmbedder, ZeroShotResult, encode_images, score_predictions, zero_shot, zero_shot_features

__all__ = [
    "READERS", "ClassEmbedder", "DatasetSpec", "EvalSet", "KShotResult", "ProbeSplit", "PromptSet", "ZeroShotResult", "baselines",
    "bootstrap", "encode_images", "k_shot", "kshot_table", "linear_probe", "load_dataset_table", "load_eval_set",
    "load_prompt_set", "markdown_table", "probe_split", "score", "score_predictions", "synfundus_label_classes",
    "write_reports", "zero_shot", "zero_shot_features",
]
