"""Intent classification: a MiniLM encoder with a classification head, trained offline.

`IntentClassifier.load(path, quantization="int8")` is the serving API (serving.nlu.runtime);
`switchboard nlu train|eval|predict` the command line (serving.nlu.cli). Importing this package
loads neither torch nor onnxruntime: the classifier imports the runtime it is asked for.
"""

from .artifact import FORMAT_VERSION, ArtifactError
from .data import OOS_LABEL, DataError
from .runtime import IntentClassifier, IntentScore, Prediction
from .slots import DEFAULT_SLOT_PATTERNS, Slot, SlotPattern

__all__ = [
    "DEFAULT_SLOT_PATTERNS",
    "FORMAT_VERSION",
    "OOS_LABEL",
    "ArtifactError",
    "DataError",
    "IntentClassifier",
    "IntentScore",
    "Prediction",
    "Slot",
    "SlotPattern",
]
