"""Method registry: name -> LightningModule class (its `config_class` is the method's config).

Adding a method: one module file, one YAML in sweeps/, one line here.
"""

from research.modules.augmented_lora import AugmentedLoraModule
from research.modules.base import AdaptationModule
from research.modules.cluster_lora import ClusterLoraModule
from research.modules.constrained_lora import ConstrainedLoraModule
from research.modules.dual_tower import DualTowerModule
from research.modules.hybrid_lora import HybridLoraModule
from research.modules.hyper_lora import HyperLoraModule
from research.modules.merges import (
    DareMergeModule,
    MoeMergeModule,
    SvdMergeModule,
    TiesMergeModule,
    WeightedMergeModule,
)
from research.modules.moe_router import MoeRouterModule
from research.modules.multitask import MultitaskModule
from research.modules.no_adaptation import NoAdaptationModule
from research.modules.per_persona_lora import PerPersonaLoraModule
from research.modules.prefix_static import PrefixStaticModule
from research.modules.prompt_tuning import PromptClusterModule, PromptPersonaModule
from research.modules.reptile import ReptileModule
from research.modules.retrieval import RetrievalModule
from research.modules.selective_routing import SelectiveRoutingModule
from research.modules.unified_lora import UnifiedLoraModule
from research.modules.user_embedding import UserEmbeddingModule

METHODS: dict[str, type[AdaptationModule]] = {
    "no_adaptation": NoAdaptationModule,
    "unified_lora": UnifiedLoraModule,
    "per_persona_lora": PerPersonaLoraModule,
    "hybrid_lora": HybridLoraModule,
    "constrained_lora": ConstrainedLoraModule,
    "cluster_lora": ClusterLoraModule,
    "moe_merge": MoeMergeModule,
    "weighted_merge": WeightedMergeModule,
    "ties_merge": TiesMergeModule,
    "dare_merge": DareMergeModule,
    "svd_merge": SvdMergeModule,
    "selective_routing": SelectiveRoutingModule,
    "prefix_static": PrefixStaticModule,
    "retrieval": RetrievalModule,
    "prompt_persona": PromptPersonaModule,
    "prompt_cluster": PromptClusterModule,
    "user_embedding": UserEmbeddingModule,
    "multitask": MultitaskModule,
    "augmented_lora": AugmentedLoraModule,
    "moe_router": MoeRouterModule,
    "reptile": ReptileModule,
    "dual_tower": DualTowerModule,
    "hyper_lora": HyperLoraModule,
}
