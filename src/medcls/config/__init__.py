"""Run configuration: the typed schema with its defaults (:mod:`.schema`) and the checks
that need the registries or Lightning (:mod:`.checks`, imported on its own: it loads torch)."""

from medcls.config.schema import (
                                  AugmentConfig,
                                  Config,
                                  ConfigError,
                                  DataConfig,
                                  EvalConfig,
                                  ModelConfig,
                                  TrainConfig,
                                  config_from_dict,
                                  default_data_root,
                                  load_config,
                                  parse_override,
                                  preset_names,
                                  save_config,
                                  validate,
)

__all__ = ["AugmentConfig", "Config", "ConfigError", "DataConfig", "EvalConfig", "ModelConfig", "TrainConfig",
           "config_from_dict", "default_data_root", "load_config", "parse_override", "preset_names", "save_config", "validate"]
