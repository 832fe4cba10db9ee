"""Data pipeline: C4 conversion, streaming datasets and T5 span corruption."""
