"""Who answers the labeled prompts: the labeling design (every teacher, or m per prompt with every pair of
teachers compared about equally often) and `persyn plan-labeling`, which simulates designs on answers that
already exist to say which one recovers the most reward per labeled answer."""
