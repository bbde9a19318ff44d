"""icm-backend: unsupervised labelling by Internal Coherence Maximization, served to Label Studio.

The library is the engine's entry point:

    from icm_backend import label_rows
    preds = label_rows(rows, task="classify", labels=["negative", "positive"])
"""

from icm_backend.engine.labeler import label_rows
from icm_backend.engine.search import SearchConfig
from icm_backend.engine.types import Flag, Prediction
from icm_backend.errors import InputError

__version__ = "0.1.0"
__all__ = ["label_rows", "Prediction", "Flag", "SearchConfig", "InputError"]
