"""Text prompts: an open_clip text tower and a prompt -> embedding table that travels with the model.

With ``pretrained=None`` (the offline default) the text tower is built from its architecture config with seeded
random weights: embeddings are deterministic and distinct per prompt, so prompts work as **class keys** for the
classes the model was trained on, but carry no language knowledge (no open vocabulary). With a pretrained tag
(downloaded by open_clip to its cache) or a local checkpoint path, similar prompts get similar embeddings. The table
of embeddings is saved with the model, so inference on known prompts needs no text tower at all.
"""

from .encoder import DEFAULT_TEMPLATE, TextPromptEncoder, normalize_prompt
from .selection import PromptSelection
from .table import PromptEmbeddingTable, UnknownPromptError

__all__ = [
    "DEFAULT_TEMPLATE",
    "normalize_prompt",
    "PromptEmbeddingTable",
    "PromptSelection",
    "TextPromptEncoder",
    "UnknownPromptError",
]
