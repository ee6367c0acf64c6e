"""Run settings: the one place that reads VAETUT_MODE, VAETUT_SCALE and VAETUT_DATA."""

import pytest
import torch

from vaetut import config


def test_budget_follows_the_mode_and_scale(monkeypatch):
    monkeypatch.setenv("VAETUT_MODE", "quick")
    monkeypatch.setenv("VAETUT_SCALE", "5")
    assert config.budget(quick=2, full=20) == 2  # the scale applies to full mode only
    monkeypatch.setenv("VAETUT_MODE", "full")
    assert config.budget(quick=2, full=20) == 100
    assert config.budget(quick=2, full=20, cap=60) == 60
    assert config.budget(quick=0.5, full=1.5) == pytest.approx(7.5)
    monkeypatch.delenv("VAETUT_SCALE")
    monkeypatch.delenv("VAETUT_MODE")
    assert config.mode() == "full" and config.budget(quick=2, full=20) == 20


@pytest.mark.parametrize("name, value, match", [("VAETUT_MODE", "fast", "quick' or 'full"),
                                                ("VAETUT_SCALE", "0", "positive number"),
                                                ("VAETUT_SCALE", "lots", "positive number")])
def test_bad_settings_are_named(monkeypatch, name, value, match):
    monkeypatch.setenv(name, value)
    with pytest.raises(ValueError, match=match):
        config.budget(quick=1, full=2)


def test_device_and_data_root(monkeypatch, tmp_path):
    assert config.get_device("cpu") == torch.device("cpu")
    assert config.get_device("auto").type in ("cuda", "mps", "cpu")
    monkeypatch.setenv("VAETUT_DATA", str(tmp_path))
    assert config.data_root() == str(tmp_path)
    monkeypatch.delenv("VAETUT_DATA")
    assert config.data_root().endswith("vaetut/data")


def test_chapter_run_reports_mode_and_time(monkeypatch, capsys):
    monkeypatch.setenv("VAETUT_MODE", "quick")
    run = config.ChapterRun()
    line = run.finish()
    out = capsys.readouterr().out
    assert "mode=quick" in out and "outputs produced in" in line and f"torch {torch.__version__}" in line


def test_set_seed_makes_draws_repeatable():
    config.set_seed(3)
    a = torch.randn(4)
    config.set_seed(3)
    assert torch.equal(a, torch.randn(4))
