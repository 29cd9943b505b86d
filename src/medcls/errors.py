"""The user-facing error types: each message names the file, folder or key at fault."""

from medcls.config import ConfigError
from medcls.core.io import DiskFullError
from medcls.core.registry import UnknownNameError
from medcls.data.datasets import DataError
from medcls.data.images import ImageLoadError
from medcls.evaluation.evaluate import EvaluationError
from medcls.explain.gradcam import ExplainError
from medcls.inference.compiled_backend import CompileError
from medcls.inference.export import ExportError
from medcls.models.checkpoint import CheckpointError
from medcls.ood.evaluation import OODEvaluationError
from medcls.reporting.report import ReportError
from medcls.site.sample import SiteError
from medcls.training.calibrate import CalibrationError

USER_ERRORS = (ConfigError, DataError, ImageLoadError, CheckpointError, EvaluationError, UnknownNameError,
               ExportError, FileNotFoundError, DiskFullError, ExplainError, ReportError, OODEvaluationError,
               CompileError, CalibrationError, SiteError)
