"""The sandbox container image: a Debian bookworm base plus the supervisor, named by a recipe hash.

`ensure_image()` builds it when missing (no registry needed) and returns the tag; `image_tag()`
computes the tag without building; `image_exists(tag)` asks the local engine.
"""

from qwq_agent.sandbox.image.builder import BuildResult, build_image, ensure_image, image_exists, image_tag
from qwq_agent.sandbox.image.errors import ImageBuildError
from qwq_agent.sandbox.image.recipe import Recipe, RecipeError

__all__ = [
    "BuildResult",
    "ImageBuildError",
    "Recipe",
    "RecipeError",
    "build_image",
    "ensure_image",
    "image_exists",
    "image_tag",
]
