"""The user-facing error types: each message names the file, folder or key at fault."""

from medcls.checkpoint import CheckpointError
from medcls.compiled_model import CompileError
from medcls.config import ConfigError
from medcls.data.datasets import DataError
from medcls.data.images import ImageLoadError
from medcls.evaluation.evaluate import EvaluationError
from medcls.export import ExportError
from medcls.io import DiskFullError
from medcls.explain.gradcam import ExplainError
from medcls.evaluation.ood_eval import OODEvaluationError
from medcls.registry import UnknownNameError
from medcls.reporting.report import ReportError

USER_ERRORS = (ConfigError, DataError, ImageLoadError, CheckpointError, EvaluationError, UnknownNameError,
               ExportError, FileNotFoundError, DiskFullError, ExplainError, ReportError, OODEvaluationError,
               CompileError)
