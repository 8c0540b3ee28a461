"""Teachers decode images by the same rule as training (spl_losses.data.image_checks.open_rgb): a 16-bit
grayscale PNG is scaled to 8 bits, not clipped to white."""
import io

import numpy as np
import torch
from datasets import Dataset, Features, Image, Value
from PIL import Image as PILImage

from spl_losses.teachers.views import score_split_views


def test_a_16_bit_png_reaches_a_teacher_scaled_to_8_bits():
    buffer = io.BytesIO()
    PILImage.fromarray(np.full((8, 8), 32896, dtype=np.uint16)).save(buffer, format="PNG")  # 32896 = 128 * 257
    split = Dataset.from_dict({"image": [{"bytes": buffer.getvalue(), "path": None}], "index": [0]},
                              features=Features({"image": Image(), "index": Value("int64")}))
    seen = []

    def transform(image):
        seen.append(np.asarray(image))
        return torch.zeros(3, 8, 8)

    score_split_views(split, lambda pixels: torch.zeros(pixels.shape[0], 2), transform, grid=0)
    assert seen[0].shape == (8, 8, 3) and int(seen[0].min()) == int(seen[0].max()) == 128  # clipping gives 255
