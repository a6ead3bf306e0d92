"""Config: YAML round trip, unknown keys named, bad values explained, CLI/UI text coerced."""

import pytest

from finetune import config
from finetune.errors import ConfigError


def test_defaults_are_valid_and_auto_where_the_tool_decides():
    cfg = config.RunConfig().validate()
    assert cfg.model == "SmolLM2-135M-Instruct"
    assert cfg.data == "sample:contacts"
    for name in ("max_length", "batch_size", "learning_rate", "lora_r", "precision", "max_steps"):
        assert getattr(cfg, name) == "auto"


def test_yaml_round_trip(tmp_path):
    cfg = config.RunConfig(method="qlora", lora_r=8, learning_rate=1e-4, data="my.jsonl",
                           use_dora=True, epochs=2.5)
    path = tmp_path / "config.yaml"
    cfg.save(path)
    assert config.load(path) == cfg


def test_unknown_keys_are_named_with_a_suggestion(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("lora_rank: 8\nlearning_rate: 0.001\nfoo: 1\n")
    with pytest.raises(ConfigError) as e:
        config.load(path)
    msg = str(e.value)
    assert "'lora_rank' (did you mean 'lora_r'?)" in msg
    assert "'foo'" in msg and str(path) in msg


def test_bad_values_are_all_listed():
    with pytest.raises(ConfigError) as e:
        config.from_dict({"method": "dpo", "lora_r": -3, "batch_size": "many", "packing": "x"})
    msg = str(e.value)
    assert "method: 'dpo' is not one of lora, qlora, full" in msg
    assert "lora_r: -3 is outside 1..1024" in msg
    assert "batch_size: expected a number or 'auto', got 'many'" in msg
    assert "packing: expected true or false" in msg


def test_invalid_yaml_names_the_line(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("method: lora\nlora_r: [8\n")
    with pytest.raises(ConfigError, match=r"c.yaml line \d+: not valid YAML"):
        config.load(path)


def test_missing_file_and_non_mapping(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        config.load(tmp_path / "nope.yaml")
    path = tmp_path / "list.yaml"
    path.write_text("- 1\n- 2\n")
    with pytest.raises(ConfigError, match="expected a mapping"):
        config.load(path)


def test_text_from_cli_or_ui_is_coerced():
    cfg = config.from_dict({"lora_r": "32", "learning_rate": "2e-4", "batch_size": "auto",
                            "packing": "true", "epochs": 3})
    assert cfg.lora_r == 32 and cfg.learning_rate == 2e-4 and cfg.batch_size == "auto"
    assert cfg.packing is True
    assert config.from_dict({"lora_r": 16.0}).lora_r == 16


def test_every_field_has_help_and_a_group():
    for name, f in config.FIELDS.items():
        assert f.metadata["help"], name
        assert f.metadata["group"], name


def test_cli_help_lists_settings(capsys):
    from finetune.cli import main

    with pytest.raises(SystemExit):
        main(["train", "--help"])
    out = capsys.readouterr().out
    assert "--lora-r" in out and "--preset" in out and "LoRA rank" in out


def test_cli_reports_config_errors_without_traceback(tmp_path, capsys):
    from finetune.cli import main

    path = tmp_path / "c.yaml"
    path.write_text("epochz: 3\n")
    assert main(["train", str(path)]) == 2
    err = capsys.readouterr().err
    assert "unknown setting(s) 'epochz' (did you mean 'epochs'?)" in err
    assert "Traceback" not in err


def test_settings_of_several_processes_that_cannot_work_together_are_explained():
    cfg = config.from_dict({"num_processes": "8", "strategy": "zero3", "num_machines": 2,
                            "machine_rank": 1, "main_process_ip": "10.0.0.1"})
    assert (cfg.num_processes, cfg.strategy, cfg.machine_rank) == (8, "zero3", 1)
    with pytest.raises(ConfigError) as e:
        config.from_dict({"num_processes": 3, "num_machines": 2, "machine_rank": 2,
                          "main_process_port": 0, "method": "qlora", "strategy": "fsdp"})
    msg = str(e.value)
    assert "main_process_ip: 2 machines need the address of machine 0" in msg
    assert "main_process_port: 0 (any free port) works on one machine only" in msg
    assert "machine_rank: 2 is not below num_machines (2)" in msg
    assert "3 processes cannot be shared evenly by 2 machines" in msg
    assert "use strategy 'ddp' with qlora" in msg
    with pytest.raises(ConfigError, match="strategy: 'mpi' is not one of ddp, fsdp, zero2, zero3"):
        config.from_dict({"strategy": "mpi"})
