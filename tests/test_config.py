import pytest

from research.config import ConfigError
from research.recipes.experiment import load_config


def test_defaults_are_the_study_settings():
    cfg = load_config(method="unified_lora")
    assert (cfg.method_args.r, cfg.method_args.alpha, cfg.method_args.dropout) == (8, 16, 0.05)
    assert cfg.method_args.target_modules == ("q_proj", "v_proj")
    assert cfg.train.lr == 5e-4 and cfg.train.max_epochs == 3


def test_precedence_file_then_method_then_overrides(tmp_path):
    path = tmp_path / "exp.yaml"
    path.write_text("method: no_adaptation\ntrain:\n  lr: 0.01\n  max_epochs: 7\n")
    cfg = load_config(path, ["train.lr=0.002", "method_args.r=4"], method="unified_lora")
    assert cfg.method == "unified_lora" and cfg.train.lr == 0.002 and cfg.train.max_epochs == 7
    assert cfg.method_args.r == 4


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["train.lrr=1"], r"unknown key train.lrr \(allowed: max_epochs, lr,"),
        (
            ["method_args.rank=4"],
            r"unknown key method_args.rank \(allowed: r, alpha, dropout, target_modules, held_out\)",
        ),
        (["train.precision=fp8"], r"train.precision: 'fp8' is not allowed \(allowed: bf16-mixed, 32-true, 16-mixed\)"),
        (["train.max_epochs=two"], r"train.max_epochs: expected an integer, got 'two'"),
        (["data.user_name=maybe"], r"expected true or false"),
        (["data.oracle=true"], r"data.oracle: 'true' is not allowed \(allowed: none, preferences, resolved\)"),
        (["method=magic"], r"method: 'magic' is not registered \(allowed: .*unified_lora"),
        (["train"], r"override 'train' is not key=value"),
    ],
)
def test_bad_keys_and_values_name_what_is_allowed(overrides, message):
    with pytest.raises(ConfigError, match=message):
        load_config(None, overrides)


def test_missing_config_file():
    with pytest.raises(ConfigError, match="does not exist"):
        load_config("nowhere.yaml")


def test_exponent_without_a_dot_is_a_number():
    from research.recipes.experiment import load_config

    assert load_config(None, ["train.lr=5e-05"], "unified_lora").train.lr == 5e-05  # as Optuna prints it


def test_override_values_are_typed_by_their_field():
    from research.config import build, parse_overrides
    from research.data.generate import SimulatorConfig
    from research.recipes.experiment import load_config

    # a string field keeps the text: a run id of digits is not a number
    assert load_config(None, ["method_args.unified_run=01234567"], "hybrid_lora").method_args.unified_run == "01234567"
    for given in ("01234567", "[01234567]", "01234567,12345678"):  # a list of run ids, one or more
        runs = load_config(
            None, [f"method_args.candidate_runs={given}"], "selective_routing"
        ).method_args.candidate_runs
        assert runs[0] == "01234567" and len(runs) == given.count(",") + 1
    weights = build(SimulatorConfig, parse_overrides(["neutral_intent_weights=[0, 0, 0, 1, 0, 0, 0, 0, 0.5]"]))
    assert weights.neutral_intent_weights == (0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 0.0, 0.5)
    weights = build(SimulatorConfig, parse_overrides(["neutral_intent_weights=1,2,0,0,0,0,0,0,0"]))
    assert weights.neutral_intent_weights == (1.0, 2.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0)
    cfg = load_config(None, ["train.lr=1e-3", "data.user_name=false", "eval.splits=val,test"], "unified_lora")
    assert (cfg.train.lr, cfg.data.user_name, cfg.eval.splits) == (1e-3, False, ("val", "test"))
