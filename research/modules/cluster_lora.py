"""Cluster LoRA: personas clustered (research/clustering.py), one adapter per cluster
trained on the cluster's training dialogues. The clustering (silhouette, sizes,
persona -> cluster map, 2-D plot) is logged with the run."""

from dataclasses import dataclass, field

from research.config import ClusteringConfig
from research.modules.base import Needs
from research.modules.group_lora import GroupLoraModule
from research.modules.unified_lora import UnifiedLoraConfig


@dataclass
class ClusterLoraConfig(UnifiedLoraConfig):
    clustering: ClusteringConfig = field(default_factory=ClusteringConfig)


class ClusterLoraModule(GroupLoraModule):
    config_class = ClusterLoraConfig

    @classmethod
    def needs(cls, args) -> Needs:
        return Needs(groups="cluster", clustering=args.clustering)
