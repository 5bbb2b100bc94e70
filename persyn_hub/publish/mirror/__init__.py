"""Every finished stage on the Hub as it finishes, and a run that continues from there.

`stage_mirror` (`StageMirror`, the runner's mirror), `rows` (generation row checkpoints pushed as they
grow), `layout` (the repo's folders and names) and `card` (the stages repo's card).
"""
