"""Learnability, PerSyn's first signal: the untuned student's mean log-probability of a teacher's answer.

`scorer` (in-process, `score_learnability`), `served` (a served student: TGI, vLLM, llama.cpp),
`tokens` (the SFT view of a row both share), `engines` and `prefix` (the two forward paths),
`costs` (what a forward costs, which decides between them). Nothing is imported here, so reading a
constant from `tokens` does not load torch.
"""
