"""The demo reuses finished steps only for the settings that produced them."""

import pytest

from lsr_os.demo.pipeline import DemoConfig, _check_settings
from lsr_os.errors import ConfigError


def test_a_folder_built_with_other_settings_is_refused(tmp_path):
    _check_settings(tmp_path, DemoConfig(out=tmp_path, n_images=400))
    _check_settings(tmp_path, DemoConfig(out=tmp_path, n_images=400))  # same settings: reused
    with pytest.raises(ConfigError, match="n_images differ"):
        _check_settings(tmp_path, DemoConfig(out=tmp_path, n_images=800))
