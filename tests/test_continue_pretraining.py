"""yamls/pt_continue.yaml: continue pre-training Hugging Face weights on an in-house corpus that
was converted with a local source and the model's own tokenizer, all from local directories."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from t5composer.config import config_from_dict, load_config
from t5composer.data.c4_convert import convert_c4
from t5composer.data.span_spec import SpanCorruptionSpec
from t5composer.data.plan import plan_data
from t5composer.run.build import build_trainer
from test_generation import tiny_config
from test_training import tiny

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_continue_pretraining_from_local_hf_weights_on_an_inhouse_corpus(tmp_path):
    from safetensors.torch import load_file

    from t5composer.models.hf_interchange import export_hf
    from t5composer.models.t5 import T5ForConditionalGeneration

    # "HF weights": a small T5 v1.1 saved as a Hugging Face directory with its tokenizer.
    tok = Path(plan_data(config_from_dict(tiny())).tokenizer_name)
    torch.manual_seed(0)
    hf_dir = export_hf(model=T5ForConditionalGeneration(tiny_config(vocab_size=640)), out_dir=tmp_path / 'hf_model', tokenizer=str(tok))
    # The in-house corpus, converted from a local folder with the model's tokenizer.
    convert_c4(source=str(tok.parent / 'corpus'), out_root=tmp_path / 'inhouse', tokenizer=str(hf_dir), spec=SpanCorruptionSpec(input_length=64),
               max_docs=40, progress=False)

    cfg = load_config(str(REPO / 'yamls' / 'pt_continue.yaml'), [
        f'variables.hf_model={hf_dir}', f'variables.data_local={tmp_path / "inhouse"}', f'save_folder={tmp_path / "run"}',
        'precision=fp32', 'compile=false', 'max_duration=4ba', 'global_train_batch_size=4', 'device_train_microbatch_size=4',
        'device_eval_batch_size=4', 'eval_subset_num_batches=1', 'eval_interval=4ba', 'save_interval=4ba',
        'scheduler.t_warmup=1ba', 'data.input_length=64', 'data.num_workers=0', '~callbacks', 'progress_bar=false',
    ])
    trainer = build_trainer(cfg)
    saved = load_file(hf_dir / 'model.safetensors')
    ours = trainer.state.model.model.state_dict()
    assert all(torch.equal(saved[k], ours[k]) for k in saved)  # starts from the HF weights
    trainer.fit()
    assert int(trainer.state.timestamp.batch) == 4
    assert torch.isfinite(trainer.state.eval_metrics['eval']['LanguageNLL'].compute())
    trainer.close()
    assert (tmp_path / 'run' / 'ep0-ba4-rank0.pt').exists()
