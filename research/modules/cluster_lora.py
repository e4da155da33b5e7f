"""Cluster LoRA: personas clustered (research/clustering.py), one adapter per cluster
trained on the cluster's training dialogues. The clustering (silhouette, sizes,
persona -> cluster map, 2-D plot) is logged with the run."""

from dataclasses import dataclass, field

from research.clustering import ClusteringConfig, cluster_personas, log_clustering
from research.modules.group_lora import GroupLoraModule
from research.modules.unified_lora import UnifiedLoraConfig


@dataclass
class ClusterLoraConfig(UnifiedLoraConfig):
    clustering: ClusteringConfig = field(default_factory=ClusteringConfig)


class ClusterLoraModule(GroupLoraModule):
    config_class = ClusterLoraConfig

    def __init__(self, model, tokenizer, train, args: ClusterLoraConfig, datamodule) -> None:
        clustering = cluster_personas(args.clustering, datamodule)
        log_clustering(clustering, args.clustering)
        groups = clustering.groups()
        super().__init__(
            model, tokenizer, train, args, datamodule, groups, args.target_modules, args.r, args.alpha, args.dropout
        )
