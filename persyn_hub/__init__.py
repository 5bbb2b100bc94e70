"""persyn_hub: personalized distillation data via router-guided multi-teacher distillation (PerSyn).

Importing the package registers `PersynRouter` with the transformers Auto classes, so
`AutoModel.from_pretrained("org/router")` works without `trust_remote_code`.
"""

from persyn_hub.recipe.config import PersynRecipe, RecipeError, load_recipe
from persyn_hub.router.modeling import PersynRouter, PersynRouterConfig, register_auto_classes

register_auto_classes()

__version__ = "0.1.0"

__all__ = ["PersynRecipe", "PersynRouter", "PersynRouterConfig", "RecipeError", "__version__", "load_recipe"]
