"""Method registry: name -> LightningModule class (its `config_class` is the method's config).

Adding a method: one module file, one YAML in sweeps/, one line here.
"""

from research.modules.base import AdaptationModule
from research.modules.no_adaptation import NoAdaptationModule
from research.modules.unified_lora import UnifiedLoraModule

METHODS: dict[str, type[AdaptationModule]] = {
    "no_adaptation": NoAdaptationModule,
    "unified_lora": UnifiedLoraModule,
}
