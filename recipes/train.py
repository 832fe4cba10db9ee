"""Pre-train (or continue training) a T5 model from a YAML recipe.

    composer recipes/train.py yamls/pt_base.yaml [key=value ...]
    composer -n 8 recipes/train.py yamls/pt_base.yaml optimizer.lr=0.01 run_name=x
    python recipes/train.py yamls/demo.yaml          # one process, no launcher needed
"""

from t5composer.cli import train_main as main

if __name__ == '__main__':
    raise SystemExit(main())
