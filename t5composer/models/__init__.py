"""T5 model, presets, metrics and the Composer wrapper."""

from t5composer.models.composer_t5 import ComposerT5, build_composer_t5, t5_flops_per_batch
from t5composer.models.hf_interchange import export_composer_checkpoint, export_hf, hf_state_dict, write_hf_dir
from t5composer.models.metrics import LanguageNLL, TokenAccuracy
from t5composer.models.presets import T5_V1_1_PRESETS, load_model_config, preset_names
from t5composer.models.t5 import T5ForConditionalGeneration, T5Output, shift_right

__all__ = [
    'ComposerT5',
    'LanguageNLL',
    'T5ForConditionalGeneration',
    'T5Output',
    'T5_V1_1_PRESETS',
    'TokenAccuracy',
    'build_composer_t5',
    'export_composer_checkpoint',
    'export_hf',
    'hf_state_dict',
    'load_model_config',
    'preset_names',
    'shift_right',
    't5_flops_per_batch',
    'write_hf_dir',
]
