"""The attention kernel a module fits with (TrainConfig.attention) and the one it generates with."""

import pytest
import torch

from research.modules.base import fit_attention, set_attention


@pytest.mark.parametrize(
    ("setting", "device", "expected"),
    [("auto", "cpu", "eager"), ("auto", "cuda", None), ("sdpa", "cpu", "sdpa"), ("eager", "cuda", "eager")],
)
def test_fit_attention_picks_eager_on_cpu_only_when_auto(setting, device, expected):
    assert fit_attention(setting, torch.device(device)) == expected


def test_set_attention_switches_a_peft_model_and_gives_back_the_loaded_kernel():
    from peft import LoraConfig, get_peft_model
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=32, hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32
    )
    model = get_peft_model(LlamaForCausalLM(config), LoraConfig(r=2, target_modules=["q_proj", "v_proj"]))
    loaded = model.config._attn_implementation
    assert loaded == "sdpa"  # transformers' default, so the switch below is a real one
    ids = torch.tensor([[5, 6, 7, 8]])
    before = model(input_ids=ids).logits
    assert set_attention(model, "eager") == loaded
    assert model.config._attn_implementation == "eager"
    eager = model(input_ids=ids).logits
    assert set_attention(model, None) == "eager"  # None keeps the kernel
    assert set_attention(model, loaded) == "eager"
    assert model.config._attn_implementation == loaded
    # the same attention in fp32, either kernel
    torch.testing.assert_close(before, eager, atol=1e-4, rtol=1e-4)


def test_a_fit_runs_eager_on_cpu_and_generates_with_the_loaded_kernel(experiment):
    import lightning.pytorch as L

    from research.datamodules.persona import PersonaDataModule
    from research.recipes.experiment import load_config
    from research.recipes.train import base_copy, build_module, make_trainer

    cfg = load_config(None, experiment, "unified_lora")
    tokenizer, model = base_copy(cfg.base_model)
    datamodule = PersonaDataModule(cfg.data, tokenizer, cfg.train.batch_size, cfg.seed)
    datamodule.prepare_data()
    datamodule.setup()
    module = build_module(cfg, model, tokenizer, datamodule)[0]
    seen = []

    class Spy(L.Callback):
        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            seen.append(pl_module.model.config._attn_implementation)

    trainer = make_trainer(cfg, max_steps=2, limit_val_batches=0, enable_progress_bar=False, callbacks=[Spy()])
    trainer.fit(module, datamodule=datamodule)
    assert seen == ["eager", "eager"]
    assert module.model.config._attn_implementation == "sdpa"
