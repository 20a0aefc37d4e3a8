"""images.jpeg: JPEG within budget is decoded once; over budget or truncated it is refused."""
from __future__ import annotations

import cv2
import numpy as np
import pytest

from imagedata import busy_image, coord_image
from stlake.ingestion import images
from stlake.ingestion.records import SlideError


def test_jpeg_within_and_over_budget(tmp_path):
    image = coord_image(80, 120)
    path = tmp_path / "slide.dat"
    path.write_bytes(cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, 95])[1].tobytes())
    with images.open_region_reader(str(path), 1 << 20) as reader:
        assert np.array_equal(reader.read_region(10, 30, 5, 50), cv2.imread(str(path))[10:30, 5:50])
        assert reader.peak_decoded_bytes == 80 * 120 * 3
    with pytest.raises(SlideError) as err:
        images.open_region_reader(str(path), 10_000)
    assert err.value.reason == "image_too_large"
    assert "120x80" in err.value.detail and "tiled TIFF" in err.value.detail


def test_truncated_jpeg(tmp_path):
    data = cv2.imencode(".jpg", busy_image(100, 100))[1].tobytes()
    path = tmp_path / "cut.jpg"
    path.write_bytes(data[: len(data) * 2 // 3])
    with pytest.raises(SlideError) as err:
        images.open_region_reader(str(path))
    assert err.value.reason == "image_corrupt"
