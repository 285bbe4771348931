"""The one typed configuration for every stage: schema, YAML loading, `--set` overrides, validation, saving.

`schema` holds the sections of a run, `commands` the settings of commands that are not part of a run (the
generators, serve, generate, chat, export), `loading` reading and validating them. Everything is importable
from `tunesmith.config`. No torch import here: `tunesmith --help` and config checks stay fast.
"""

from tunesmith.config.commands import (
    ChatConfig,
    DecodingConfig,
    ExportConfig,
    FromDocsConfig,
    GenerateConfig,
    SelfInstructConfig,
    ServeConfig,
    TeacherConfig,
)
from tunesmith.config.loading import (
    apply_overrides,
    config_from_dict,
    config_hash,
    config_to_yaml,
    load_config,
    parse_override,
    read_yaml,
    validate_section,
)
from tunesmith.config.schema import (
    DEFAULT_MODEL,
    Config,
    DataConfig,
    EvalConfig,
    JudgeConfig,
    ModelConfig,
    OutputConfig,
    Section,
    Shape,
    SourceConfig,
    SplitConfig,
    TemplateConfig,
    TokenizationConfig,
    TrainingConfig,
    cross_field_problems,
    learning_rate,
)

__all__ = ["DEFAULT_MODEL", "ChatConfig", "Config", "DataConfig", "DecodingConfig", "EvalConfig", "ExportConfig",
           "FromDocsConfig", "GenerateConfig", "JudgeConfig", "ModelConfig", "OutputConfig", "Section", "SelfInstructConfig",
           "ServeConfig", "Shape", "SourceConfig", "SplitConfig", "TeacherConfig", "TemplateConfig", "TokenizationConfig",
           "TrainingConfig", "apply_overrides", "config_from_dict", "config_hash", "config_to_yaml",
           "cross_field_problems", "learning_rate", "load_config", "parse_override", "read_yaml",
           "validate_section"]
