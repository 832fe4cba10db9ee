"""Check converted splits: every shard present with its recorded size, row counts against the
metadata, shard checksums, and every row (its length, token ids inside the vocabulary).

    python recipes/verify_data.py data/c4                 # every split under the data root
    python recipes/verify_data.py data/c4/train           # one split
    python recipes/verify_data.py data/c4 --splits val    # some splits of a root

Exit status 0: intact; 1: damaged (each bad shard is named, with the command that remakes the
split); 2: no split at that path.
"""

from t5composer.data.verify import verify_main as main

if __name__ == '__main__':
    raise SystemExit(main())
