"""Model stage: the HF-style config, the BERT4Rec network and its time-gap input.

Pure torch + transformers; never imports Ray or DeepSpeed.
"""

from recsys_dist.model.bert4rec import IGNORE_INDEX, WEIGHTS_FILE, Bert4Rec, Bert4RecOutput
from recsys_dist.model.configuration import Bert4RecConfig
from recsys_dist.model.losses import NegativeSample, sample_negatives

__all__ = [
    "IGNORE_INDEX",
    "WEIGHTS_FILE",
    "Bert4Rec",
    "Bert4RecConfig",
    "Bert4RecOutput",
    "NegativeSample",
    "sample_negatives",
]
