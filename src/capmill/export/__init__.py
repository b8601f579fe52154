from capmill.export.config import ExportConfig, export_config, load_export_recipe
from capmill.export.mix import TARGET_MIX, Draw, MixConfig, MixSampler
from capmill.export.runner import ExportReport, export_run, known_captions

__all__ = ["TARGET_MIX", "Draw", "ExportConfig", "ExportReport", "MixConfig", "MixSampler", "export_config",
           "export_run", "known_captions", "load_export_recipe"]
