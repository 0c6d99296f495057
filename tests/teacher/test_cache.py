"""TeacherCache: hits skip SAM2, changed settings miss, the classes of a case share SAM2's image encoding."""

from __future__ import annotations

import numpy as np

from bundle.teacher import SAM2Teacher, TeacherCache
from tests.helpers.sam2 import CONFIG, SIZE


def test_cache_hit_skips_sam2_and_changed_settings_miss(tmp_path, teacher, checkpoint, case, monkeypatch):
    image, mask = case
    cache = TeacherCache(tmp_path / "cache")
    calls = []
    real_volumes = teacher.volumes

    def counted(*args):
        calls.append(1)
        return real_volumes(*args)

    monkeypatch.setattr(teacher, "volumes", counted)
    first = cache.get_or_compute(teacher, "case_7", 1, image, mask)
    second = cache.get_or_compute(teacher, "case_7", 1, image, mask)
    assert len(calls) == 1  # the second call read the cache; SAM2 did not run again
    np.testing.assert_allclose(second[0], first[0], atol=1e-3)  # stored as float16
    np.testing.assert_array_equal(second[1], first[1])
    assert len(list((tmp_path / "cache").glob("*.npz"))) == 1
    assert (cache.hits, cache.misses) == (1, 1)
    key = TeacherCache.case_key("case_7", image, mask)
    assert cache.get(key, 1, teacher.settings) is not None  # the entry the two calls shared
    other = SAM2Teacher(checkpoint, CONFIG, image_size=SIZE, axis=2, box_margin=4)
    assert cache.get(key, 1, other.settings) is None  # another margin: another key
    assert cache.get(key, 2, teacher.settings) is None  # another class
    assert cache.get(TeacherCache.case_key("case_8", image, mask), 1, teacher.settings) is None  # another case
    edited = image.copy()
    edited[0, 0, 0] += 1.0  # the same case name with an edited image: SAM2 runs again
    cache.get_or_compute(teacher, "case_7", 1, edited, mask)
    assert len(calls) == 2 and cache.misses == 2
    # a damaged entry (a disk error, a hand-edited file) is computed again and rewritten, not a crash
    entry = cache.path(key, 1, teacher.settings)
    entry.write_bytes(b"not an npz")
    again = cache.get_or_compute(teacher, "case_7", 1, image, mask)
    assert len(calls) == 3 and cache.misses == 3
    np.testing.assert_array_equal(again[1], first[1])
    cache.get_or_compute(teacher, "case_7", 1, image, mask)
    assert len(calls) == 3 and cache.hits == 2  # the rewritten entry reads back


def test_classes_of_a_case_share_sam2_image_encoding(tmp_path, teacher, monkeypatch):
    from bundle.data.demo import make_phantom

    image, label = make_phantom(5, shape=(24, 32, 12))
    masks = {1: label == 1, 2: label == 2}
    separately = {c: teacher.volume(image, m) for c, m in masks.items()}
    encoded = []
    real_set_image = teacher.predictor.set_image
    monkeypatch.setattr(teacher.predictor, "set_image", lambda img: encoded.append(1) or real_set_image(img))
    cache = TeacherCache(tmp_path / "cache")
    together = cache.get_or_compute_many(teacher, "case_5", image, masks)
    either = (label == 1).any(axis=(0, 1)) | (label == 2).any(axis=(0, 1))
    assert len(encoded) == either.sum() < sum(m.any(axis=(0, 1)).sum() for m in masks.values())  # once per slice
    for c in masks:
        np.testing.assert_allclose(together[c][0], separately[c][0], atol=1e-5)
        np.testing.assert_array_equal(together[c][1], separately[c][1])
    assert (cache.hits, cache.misses) == (0, 2)
    cache.get_or_compute(teacher, "case_5", 2, image, masks[2])
    assert (cache.hits, cache.misses) == (1, 2) and len(encoded) == either.sum()  # read back: SAM2 not run
