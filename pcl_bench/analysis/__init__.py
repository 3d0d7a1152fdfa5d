"""Analysis of results and checkpoints: the paper's tables and figures, and dimensional collapse."""
