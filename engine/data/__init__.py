"""Data: sources and formats, rows, corpora, tokenizers trained for scratch, token files, packing."""
