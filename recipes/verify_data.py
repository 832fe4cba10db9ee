"""Check converted splits: every shard present with its recorded size, row counts against the
metadata, shard checksums, and every row (its length, token ids inside the vocabulary).

    python recipes/verify_data.py data/c4                 # every split under the data root
    python recipes/verify_data.py data/c4/train           # one split
    python recipes/verify_data.py data/c4 --splits val    # some splits of a root

Exit status 0: intact; 1: damaged (each bad shard is named, with the command that remakes the
split); 2: no split at that path.
"""

from __future__ import annotations

import sys
from pathlib import Path

try:
    import t5composer  # noqa: F401
except ImportError:  # run from a checkout without `pip install -e .`
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from t5composer.data.verify import verify_main as main  # noqa: E402

if __name__ == '__main__':
    sys.exit(main(sys.argv[1:]))
