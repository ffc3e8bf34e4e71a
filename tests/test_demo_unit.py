"""The demo reuses finished steps only for the settings that produced them."""

import pytest

from lsr_os.demo.pipeline import STEPS, DemoConfig, _check_settings, _Steps
from lsr_os.errors import ConfigError


def test_a_folder_built_with_other_settings_is_refused(tmp_path):
    _check_settings(tmp_path, DemoConfig(out=tmp_path, n_images=400))
    _check_settings(tmp_path, DemoConfig(out=tmp_path, n_images=400))  # same settings: reused
    with pytest.raises(ConfigError, match="n_images differ"):
        _check_settings(tmp_path, DemoConfig(out=tmp_path, n_images=800))


def test_each_step_is_announced_with_its_number_before_its_progress_bars():
    said, ran = [], []
    steps = _Steps(said.append)
    steps.run("dense encoder", False, lambda: ran.append(said[-1]), "training it (40 epochs)")
    steps.run("sparse head", True, lambda: ran.append("never"), "training it")
    assert said == [f"[2/{len(STEPS)}] dense encoder: training it (40 epochs)",
                    f"[4/{len(STEPS)}] sparse head: reusing the earlier output"]
    assert ran == [said[0]]  # announced before it runs: its progress bars come under its heading
    assert list(steps.seconds) == ["dense encoder", "sparse head"]
