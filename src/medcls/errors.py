"""The user-facing error types: each message names the file, folder or key at fault."""

from medcls.checkpoint import CheckpointError
from medcls.config import ConfigError
from medcls.data.datasets import DataError
from medcls.data.images import ImageLoadError
from medcls.evaluation.evaluate import EvaluationError
from medcls.evaluation.ood_eval import OODEvaluationError
from medcls.registry import UnknownNameError

USER_ERRORS = (ConfigError, DataError, ImageLoadError, CheckpointError, EvaluationError, UnknownNameError,
               FileNotFoundError, OODEvaluationError)
