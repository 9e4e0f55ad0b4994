"""optimum_prune: retraining-free pruning for Hugging Face Transformers.

Importing the package registers the loader that lets `AutoModelFor*.from_pretrained` rebuild pruned checkpoints
whose layers have different sizes.
"""

from .architectures import ADAPTERS, UnsupportedArchitectureError, get_adapter
from .configuration import PruningConfig
from .pruners import BasePruner, PrunerForCausalLM, PrunerForQuestionAnswering, PrunerForSequenceClassification
from .serialization.quantizer import register as _register_loader

_register_loader()

__version__ = "0.1.0"

__all__ = [
    "ADAPTERS",
    "BasePruner",
    "PrunerForCausalLM",
    "PrunerForQuestionAnswering",
    "PrunerForSequenceClassification",
    "PruningConfig",
    "UnsupportedArchitectureError",
    "get_adapter",
]
