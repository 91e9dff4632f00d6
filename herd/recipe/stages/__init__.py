"""The stage kinds `herd run` knows, in the order of the Llama 3 recipe. Adding one: a module here with a `Stage`
subclass (see herd/recipe/stage.py), and its class in KINDS."""

from __future__ import annotations

from herd.recipe.stage import Stage
from herd.recipe.stages.corpus import Corpus
from herd.recipe.stages.curate import Curate
from herd.recipe.stages.evaluate import Eval
from herd.recipe.stages.export import Export
from herd.recipe.stages.guard import Guard
from herd.recipe.stages.pack import Pack
from herd.recipe.stages.plan import Plan
from herd.recipe.stages.posttrain import Posttrain
from herd.recipe.stages.pretrain import Anneal, Pretrain
from herd.recipe.stages.serve import Serve
from herd.recipe.stages.tokenizer import Tokenizer

KINDS: dict[str, type[Stage]] = {
    cls.KIND: cls
    for cls in (Corpus, Curate, Tokenizer, Pack, Plan, Pretrain, Anneal, Posttrain, Guard, Eval, Export, Serve)
}
