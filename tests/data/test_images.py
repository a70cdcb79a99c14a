"""The size images are resized to (`as_size`, `target_size`): what `load_data(image_size=...)` and
`read_images` accept, and the one-line errors for the rest."""

from __future__ import annotations

import numpy as np
import pytest

from vitkit.data import load_data, read_images
from vitkit.data.images import as_size, target_size
from vitkit.errors import ConfigError, ConfigTypeError, ConfigValueError


def test_sizes_as_ints_and_pairs():
    assert as_size(None) is None
    assert as_size(32) == (32, 32)
    assert as_size((24, 40)) == (24, 40) and as_size([24, 40]) == (24, 40)
    assert as_size((np.int64(8), 16)) == (8, 16) and type(as_size((np.int64(8), 16))[0]) is int


@pytest.mark.parametrize("size", [0, -3, (0, 8), (8, -1), 2**31, (1, 2**40)])
def test_sizes_that_are_not_positive_or_beyond_any_image(size):
    with pytest.raises(ConfigValueError, match="image_size must be 1 to 2147483647 pixels a side"):
        as_size(size)


@pytest.mark.parametrize("size", ["32", 32.0, True, (8,), (8, 8, 3), (8.0, 8), ("8", "8"), {"h": 8}])
def test_sizes_of_the_wrong_type(size):
    with pytest.raises(ConfigTypeError, match="image_size must be an int or a pair of ints"):
        as_size(size)


def test_a_size_beyond_the_pixel_limit_is_refused_with_the_way_to_raise_it(monkeypatch):
    assert target_size(9459, None) == (9459, 9459)  # 89,472,681 pixels, just within the default
    with pytest.raises(ConfigValueError, match=r"image_size 9460x9460 is over the limit of 89478485 pixels; "
                                               r"raise max_image_pixels \(--max-image-pixels N or "):
        target_size(9460, None)
    assert target_size((10, 100), 1000) == (10, 100)
    with pytest.raises(ConfigValueError, match="over the limit of 999 pixels"):
        target_size((10, 100), 999)
    assert target_size(10**6, 0) == (10**6, 10**6)  # the user turned the limit off
    monkeypatch.setenv("VITKIT_MAX_IMAGE_PIXELS", "64")
    with pytest.raises(ConfigValueError, match="over the limit of 64 pixels"):
        target_size(9, None)


@pytest.mark.parametrize("size, error", [(0, ConfigValueError), (-8, ConfigValueError), ((8, 0), ConfigValueError),
                                         (10**6, ConfigValueError), ("8", ConfigTypeError)])
def test_regression_load_data_sizes(size, error):
    # load_data("digits", image_size=0) raised torch's RuntimeError from the resize; 10**6 went on
    # to resize 1797 digits to 10^12 pixels each.
    with pytest.raises(error) as refused:
        load_data("digits", image_size=size, quiet=True)
    assert isinstance(refused.value, ConfigError) and "image_size" in str(refused.value)
    assert isinstance(refused.value, ValueError if error is ConfigValueError else TypeError)


def test_read_images_holds_the_size_to_the_limit(tmp_path):
    from PIL import Image

    Image.new("RGB", (4, 4)).save(tmp_path / "a.png")
    assert read_images([tmp_path / "a.png"], (6, 5), 3, max_image_pixels=30).shape == (1, 3, 6, 5)
    with pytest.raises(ConfigValueError, match="image_size 6x6 is over the limit of 30 pixels"):
        read_images([tmp_path / "a.png"], 6, 3, max_image_pixels=30)
