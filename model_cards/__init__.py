"""Jinja templates of the cards persyn_hub writes (router model card, data set cards), shipped in the wheel
and read through `importlib.resources` (`persyn_hub.publish.cards.template_path`)."""
