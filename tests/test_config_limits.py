"""Checks that hold for command-line overrides as for the config file's own values, and a
min-nodes that no fleet of the config can meet (the server would wait for ever)."""

from __future__ import annotations

import pytest

from device_runtime.errors import ConfigError
from experiments.config import check_config, load_config


def test_min_nodes_above_the_devices_is_refused():
    cfg = load_config(None)
    cfg["data"]["devices"], cfg["server"]["min-nodes"] = 3, 5
    with pytest.raises(ConfigError, match="min-nodes = 5 but the fleet has 3 devices"):
        check_config(cfg)
    cfg["server"]["min-nodes"] = 3
    check_config(cfg)


def test_command_line_devices_get_the_config_files_checks(capsys, tmp_path):
    pytest.importorskip("flwr")
    from experiments.simulate import main

    assert main(["--devices", "1000000", "--quiet", "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert "1000000 devices of generated data need" in err and err.count("\n") == 1


@pytest.mark.parametrize("name", ["fc\n2", "fc\t2", "fc|2"])
def test_layer_names_that_would_break_the_report_are_refused(name):
    cfg = load_config(None)
    cfg["model"]["layers"][-1]["name"] = name
    cfg["model"]["head"] = [name]
    with pytest.raises(ConfigError, match="printable characters"):
        check_config(cfg)


def test_a_data_path_is_relative_to_the_config_file(tmp_path, monkeypatch):
    folder = tmp_path / "exp"
    (folder / "fleet").mkdir(parents=True)
    (folder / "c.toml").write_text('name = "own"\nalgorithms = ["fedavg"]\n'
                                   '[data]\nkind = "npz_dir"\npath = "fleet"\n')
    monkeypatch.chdir(tmp_path)  # somewhere else
    cfg = load_config(str(folder / "c.toml"))
    assert cfg["data"]["path"] == str(folder / "fleet")
    (folder / "d.toml").write_text('name = "own"\nalgorithms = ["fedavg"]\n'
                                   f'[data]\nkind = "npz_dir"\npath = "{tmp_path}"\n')
    assert load_config(str(folder / "d.toml"))["data"]["path"] == str(tmp_path)  # absolute
