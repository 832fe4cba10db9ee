"""Evaluate a checkpoint (or Hugging Face weights) on a recipe's eval set, without training.

    python recipes/evaluate.py yamls/ft_sni_base.yaml load_path=runs/ft/latest-rank0.pt   # RougeL / exact match
    python recipes/evaluate.py yamls/pt_base.yaml load_path=runs/pt_base/latest-rank0.pt  # held-out C4 NLL
    python recipes/evaluate.py yamls/ft_sni_base.yaml model.init=hf model.name=google/t5-v1_1-base
"""

from t5composer.cli import evaluate_main as main

if __name__ == '__main__':
    raise SystemExit(main())
