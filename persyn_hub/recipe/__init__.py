"""The recipe: one dataclass per YAML section, its parser and checks, dtypes, and migration of older formats."""
