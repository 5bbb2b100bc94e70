"""Every finished stage on the Hub as it finishes, and a run that continues from there.

`stage_mirror` (`StageMirror`, the runner's mirror), `commits` (commits on the push branch's head, merged
with another run's), `push_queue` (the background push thread), `stage_data` (a stage folder as its
commit's files, and back), `restore` (a published stage downloaded), `index` (the index, read and merged),
`identity` (a stage's public identity and why a key differs), `access` (can a run resume from a repo),
`rows` (generation row checkpoints pushed as they grow), `layout` (the repo's folders and names) and
`card` (the stages repo's card).
"""
