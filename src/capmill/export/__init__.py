from capmill.export.config import ExportConfig, export_config
from capmill.export.mix import TARGET_MIX, MixConfig, MixSampler
from capmill.export.runner import ExportReport, export_run

__all__ = ["TARGET_MIX", "ExportConfig", "ExportReport", "MixConfig", "MixSampler", "export_config", "export_run"]
