"""How a prompt source becomes the prompts table `persyn_hub.data.load_prompts` returns.

`source` (reading a bundled set, a Hub data set or a local file, and naming rows in messages), `columns`
(bundled defaults, column checks, template fields), `normalization` (ids and chat messages), `pool`
(a long answer pool pivoted to one row per prompt) and `duplicates` (true repeats dropped, contradicting
rows refused). Nothing is imported here.
"""
