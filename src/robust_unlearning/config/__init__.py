"""Configuration: schema validation with defaults, grid expansion, parameter-path naming."""
from .grid import (AttackSetting, UnlearnRun, attack_settings, format_value, param_string, parse_param_string,
                   unlearn_runs)
from .validate import ConfigValidationError, load_config, validate_config, validate_config_cached

__all__ = ["AttackSetting", "UnlearnRun", "attack_settings", "format_value", "param_string", "parse_param_string",
           "unlearn_runs", "ConfigValidationError", "load_config", "validate_config", "validate_config_cached"]
