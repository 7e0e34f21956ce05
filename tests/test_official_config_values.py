"""``anyorder.io.config.official_value`` / ``OfficialConfig``: values of official config files checked for kind
and rule, never coerced, every error naming the file, the key, the value and the rule (issue 22: ``"64"`` and
2.5 were coerced, ``"abc"`` gave ``invalid literal for int()``, -3 layers and 0 heads went on to odd errors)."""

from __future__ import annotations

import pytest

from anyorder.io.config import MISSING, OfficialConfig, at_least, between, official_value, one_of

SRC = "rar/config.json"
CFG = {"hidden_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4, "dropout": 0.1, "order": "random",
       "qk_norm": True, "as_float": 64.0}


@pytest.mark.parametrize("value, words", [
    ("64", "must be an integer >= 1, got '64' (a string)"),
    (2.5, "must be an integer >= 1, got 2.5"),
    ("abc", "must be an integer >= 1, got 'abc' (a string)"),
    (-3, "must be an integer >= 1, got -3"),
    (0, "must be an integer >= 1, got 0"),
    (True, "must be an integer >= 1, got True (true/false)"),
    (None, "must be an integer >= 1, got None"),
    ([64], "must be an integer >= 1, got [64] (a list)"),
])
def test_a_bad_integer_is_named_with_file_key_value_and_rule(value, words):
    with pytest.raises(ValueError) as info:
        official_value({**CFG, "num_hidden_layers": value}, "num_hidden_layers", int, SRC, at_least(1))
    assert str(info.value) == f"{SRC}: key 'num_hidden_layers' {words}"


def test_good_values_come_back_as_their_kind():
    assert official_value(CFG, "hidden_size", int, SRC, at_least(1)) == 64
    got = official_value(CFG, "as_float", int, SRC)  # 64.0 is the integer 64 (as our own configs read it)
    assert got == 64 and type(got) is int
    got = official_value({"eps": 1}, "eps", float, SRC)
    assert got == 1.0 and type(got) is float
    assert official_value(CFG, "dropout", float, SRC, between(0, 1)) == 0.1
    assert official_value(CFG, "order", str, SRC, one_of("random", "raster")) == "random"
    assert official_value(CFG, "qk_norm", bool, SRC) is True


def test_floats_strings_and_booleans_are_checked_too():
    cases = [
        ({"dropout": 1.5}, "dropout", float, between(0, 1), "key 'dropout' must be a number in [0, 1], got 1.5"),
        ({"dropout": "0.1"}, "dropout", float, None, "key 'dropout' must be a number, got '0.1' (a string)"),
        ({"dropout": float("nan")}, "dropout", float, None, "key 'dropout' must be a number, got nan"),
        ({"eps": float("inf")}, "eps", float, at_least(0), "key 'eps' must be a number >= 0, got inf"),
        ({"order": "spiral"}, "order", str, one_of("random", "raster"),
         "key 'order' must be a string one of ['random', 'raster'], got 'spiral'"),
        ({"order": 1}, "order", str, None, "key 'order' must be a string, got 1"),
        ({"qk_norm": "yes"}, "qk_norm", bool, None, "key 'qk_norm' must be true or false, got 'yes' (a string)"),
        ({"qk_norm": 1}, "qk_norm", bool, None, "key 'qk_norm' must be true or false, got 1"),
    ]
    for cfg, key, kind, rule, words in cases:
        with pytest.raises(ValueError) as info:
            official_value(cfg, key, kind, SRC, rule)
        assert str(info.value) == f"{SRC}: {words}", (cfg, str(info.value))


def test_missing_keys_defaults_and_sections():
    with pytest.raises(ValueError, match=r"^rar/config\.json: no key 'image_seq_len' \(it must be an integer >= 1\)$"):
        official_value(CFG, "image_seq_len", int, SRC, at_least(1))
    assert official_value(CFG, "attn_drop", float, SRC, between(0, 1), default=0.0) == 0.0
    assert official_value(CFG, "attn_drop", float, SRC, default=None) is None  # a default is not checked
    yaml_cfg = {"model": {"generator": {"num_attention_heads": 0}, "vq_model": "oops"}}
    top = OfficialConfig(yaml_cfg, "rar.yaml")
    gen = top.sub("model").sub("generator")
    assert "num_attention_heads" in gen and "hidden_size" not in gen
    with pytest.raises(ValueError, match=r"^rar\.yaml: key 'model\.generator\.num_attention_heads' must be an "
                                         r"integer >= 1, got 0$"):
        gen.get("num_attention_heads", int, at_least(1))
    with pytest.raises(ValueError, match=r"^rar\.yaml: model\.vq_model must be a mapping, got str$"):
        top.sub("model").sub("vq_model")
    with pytest.raises(ValueError, match=r"^rar\.yaml: no section 'model\.decoder'$"):
        top.sub("model").sub("decoder")
    assert gen.get("hidden_size", int, default=7) == 7
    with pytest.raises(ValueError, match="no key 'model.generator.hidden_size'"):
        gen.get("hidden_size", int, default=MISSING)  # MISSING: required, the default of default
    with pytest.raises(TypeError, match="kind must be"):
        official_value(CFG, "hidden_size", list, SRC)
