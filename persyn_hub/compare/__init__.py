"""Does routing help: the paper's baselines, SFT of one student per strategy, lm-evaluation-harness, and the comparison report."""
