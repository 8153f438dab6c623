import math
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.data import get_testdata_file
from pydicom.encaps import encapsulate, generate_frames

from apps.studies import pixels
from apps.studies.pixels import DEFAULT_LIMITS, checks, decode_sample, limits_for, metrics

TEST_FILES = (Path(pydicom.__file__).parent / "data" / "test_files").resolve()
LIMIT = 50_000_000

SHIPPED_IMAGES = [
    "CT_small.dcm",
    "MR_small.dcm",
    "SC_rgb_jpeg_dcmtk.dcm",
    "JPGExtended.dcm",
    "MR_small_jpeg_ls_lossless.dcm",
    "JPEG2000.dcm",
    "MR_small_RLE.dcm",
    "SC_rgb_rle.dcm",
    "SC_rgb_rle_2frame.dcm",
    "SC_ybr_full_422_uncompressed.dcm",
    "examples_ybr_color.dcm",
]


def shipped(name: str) -> Path:
    # Never download: for a name it lacks, pydicom would fetch it from the pydicom-data repository.
    found = get_testdata_file(name, download=False)
    assert found is not None and Path(found).resolve().parent == TEST_FILES, f"{name} is not shipped with pydicom"
    return Path(found)


def by_name(results):
    return {r["check"]: r for r in results}


def failing(image, limits, **kwargs):
    return {r["check"] for r in checks(metrics(image, **kwargs), limits) if not r["passed"]}


def gradient(rows=256, cols=256, low=500.0, high=3500.0):
    return np.tile(np.linspace(low, high, cols), (rows, 1))


def noisy(image, sigma, seed=7):
    return image + np.random.default_rng(seed).normal(0.0, sigma, image.shape)


def box_blur(image, size=5):
    pad = size // 2
    padded = np.pad(image, pad, mode="edge")
    rows, cols = image.shape
    return sum(padded[i : i + rows, j : j + cols] for i in range(size) for j in range(size)) / size**2


# Decoding


@pytest.mark.parametrize("name", SHIPPED_IMAGES)
def test_shipped_images_decode_to_a_plane_with_finite_metrics(name):
    image, reason = decode_sample(shipped(name), max_bytes=LIMIT)
    assert reason == ""
    assert image.ndim == 2 and image.dtype == np.float32
    values = metrics(image)
    assert set(values) == {
        "std",
        "contrast",
        "noise",
        "sharpness",
        "saturation",
        "clipping",
        "exposure",
        "edge_content",
    }
    assert all(type(v) is float and math.isfinite(v) for v in values.values())
    assert values["std"] > 0


def test_rescale_slope_and_intercept_are_applied():
    path = shipped("CT_small.dcm")
    ds = pydicom.dcmread(path)
    image, _ = decode_sample(path, max_bytes=LIMIT)
    expected = ds.pixel_array * float(ds.RescaleSlope) + float(ds.RescaleIntercept)
    np.testing.assert_allclose(image, expected)


def test_multi_frame_images_are_sampled_at_the_middle_frame():
    path = shipped("SC_rgb_rle_2frame.dcm")
    image, _ = decode_sample(path, max_bytes=LIMIT)
    frames = pydicom.dcmread(path).pixel_array.astype(np.float64)
    middle = frames[1] @ np.array(pixels.LUMA_WEIGHTS)
    np.testing.assert_allclose(image, middle, rtol=1e-5)
    assert not np.allclose(image, frames[0] @ np.array(pixels.LUMA_WEIGHTS))


def test_ybr_in_the_header_but_rgb_from_the_decoder_is_measured_as_rgb():
    # Same colour bars: one JPEG whose header says YBR_FULL (pydicom hands back RGB), one RLE in RGB.
    ybr, _ = decode_sample(shipped("SC_rgb_jpeg_dcmtk.dcm"), max_bytes=LIMIT)
    rgb, _ = decode_sample(shipped("SC_rgb_rle.dcm"), max_bytes=LIMIT)
    red = pydicom.dcmread(shipped("SC_rgb_rle.dcm")).pixel_array[..., 0]
    assert np.abs(ybr - rgb).mean() < 3  # lossy JPEG against lossless
    assert np.abs(ybr - red).mean() > 20  # taking channel 0 as Y would have measured red


def test_an_image_over_the_limit_is_refused_with_its_size():
    image, reason = decode_sample(shipped("CT_small.dcm"), max_bytes=128 * 128 * 2 - 1)
    assert image is None
    assert reason == "not decoded: 32768 bytes would exceed the 32767 limit"


def test_the_size_limit_is_decided_without_reading_pixel_data(tmp_path, monkeypatch):
    # The pixel data of this copy is cut short: decoding it fails, so the size reason proves it was never read.
    raw = shipped("CT_small.dcm").read_bytes()
    broken = tmp_path / "broken.dcm"
    broken.write_bytes(raw[: len(raw) - 10_000])
    assert decode_sample(broken, max_bytes=LIMIT)[1].startswith("not decoded: ")

    reads = []
    real_dcmread = pydicom.dcmread

    def spy(*args, **kwargs):
        reads.append(kwargs.get("stop_before_pixels", False))
        return real_dcmread(*args, **kwargs)

    monkeypatch.setattr(pixels.pydicom, "dcmread", spy)
    image, reason = decode_sample(broken, max_bytes=1000)
    assert image is None
    assert reason == "not decoded: 32768 bytes would exceed the 1000 limit"
    assert reads == [True]


@pytest.mark.filterwarnings("ignore:End of file reached before delimiter")
@pytest.mark.parametrize("cut", ["fragment", "file"])
def test_a_corrupt_jpeg_2000_image_is_not_decoded_rather_than_raising(tmp_path, cut):
    source = shipped("JPEG2000.dcm")
    copy = tmp_path / "corrupt.dcm"
    if cut == "fragment":
        # A well-formed file whose codestream stops halfway: the codec itself fails.
        ds = pydicom.dcmread(source)
        frame = next(generate_frames(ds.PixelData, number_of_frames=1))
        ds.PixelData = encapsulate([frame[: len(frame) // 2]])
        ds.save_as(copy)
    else:
        # The file itself stops inside the pixel data: pydicom drops the element.
        raw = source.read_bytes()
        copy.write_bytes(raw[: len(raw) - 100])
    image, reason = decode_sample(copy, max_bytes=LIMIT)
    assert image is None
    assert reason.startswith("not decoded: ")
    assert "\n" not in reason


def test_files_that_are_not_images_are_not_decoded(tmp_path):
    junk = tmp_path / "junk.dcm"
    junk.write_bytes(b"not dicom at all")
    image, reason = decode_sample(junk, max_bytes=LIMIT)
    assert image is None
    assert reason.startswith("not decoded: InvalidDicomError: ")
    structured_report = get_testdata_file("test-SR.dcm", download=False)
    if structured_report is not None:
        assert decode_sample(Path(structured_report), max_bytes=LIMIT) == (
            None,
            "not decoded: not an image (Rows, Columns or BitsAllocated missing)",
        )


# Metrics


def test_a_constant_image_fails_std_only():
    image = np.full((64, 64), 1000.0)
    assert failing(image, DEFAULT_LIMITS["*"]) == {"std"}
    assert by_name(checks(metrics(image), DEFAULT_LIMITS["*"]))["std"]["detail"] == "below 1e-06"


def test_a_12_bit_image_with_a_fifth_of_its_pixels_at_4095_fails_saturation():
    image = noisy(gradient(rows=250), 15)
    image[:50] = 4095
    values = metrics(image, bits_stored=12)
    assert values["saturation"] == pytest.approx(0.2)
    assert failing(image, DEFAULT_LIMITS["*"], bits_stored=12) == {"saturation"}
    assert by_name(checks(values, DEFAULT_LIMITS["*"]))["saturation"]["detail"] == "above 0.05"


@pytest.mark.parametrize("bits_stored", [12, None])
def test_a_smooth_gradient_with_mild_noise_passes_every_default(bits_stored):
    image = np.clip(np.round(noisy(gradient(), 15)), 0, 4095)
    assert failing(image, DEFAULT_LIMITS["*"], bits_stored=bits_stored) == set()


def test_signed_stored_values_use_the_signed_range():
    image = noisy(gradient(low=-1000, high=1000), 10)
    image[:10] = -32768
    values = metrics(image, bits_stored=16, pixel_representation=1)
    assert values["clipping"] == pytest.approx(10 / 256)
    assert values["saturation"] == 0.0
    assert 0.4 < values["exposure"] < 0.6


def dx_like(rows=256, cols=256):
    """A bright body in the middle of a darker field."""
    y, x = np.mgrid[0:rows, 0:cols]
    body = np.exp(-(((y - rows / 2) / (rows / 4)) ** 2 + ((x - cols / 2) / (cols / 4)) ** 2))
    return noisy(800 + 2200 * body, 15)


def test_a_dx_with_its_anatomy_in_the_middle_passes_every_dx_limit():
    assert failing(dx_like(), limits_for("DX"), bits_stored=12) == set()


def test_a_dx_bright_at_the_borders_and_dark_in_the_centre_fails_edge_content():
    image = noisy(np.full((256, 256), 300.0), 15)
    image[:20], image[-20:], image[:, :20], image[:, -20:] = 3000, 3000, 3000, 3000
    values = metrics(image, bits_stored=12)
    assert values["edge_content"] > 1.5
    assert "edge_content" in failing(image, limits_for("DX"), bits_stored=12)


def test_a_very_dark_dx_fails_exposure():
    image = noisy(np.tile(np.linspace(20, 120, 256), (256, 1)), 5)
    results = by_name(checks(metrics(image, bits_stored=12), limits_for("DX")))
    assert not results["exposure"]["passed"]
    assert results["exposure"]["detail"] == "below 0.05"


def test_the_noise_estimate_grows_with_added_noise_and_recovers_its_sigma():
    base = gradient()
    estimates = []
    for sigma in (5, 20, 60):
        image = noisy(base, sigma)
        values = metrics(image)
        spread = np.percentile(image, 99) - np.percentile(image, 1)
        assert values["noise"] * spread == pytest.approx(sigma, rel=0.1)
        estimates.append(values["noise"])
    assert estimates == sorted(estimates)


def test_sharpness_drops_after_blurring():
    # Fine detail (8-pixel squares): blurring a lone step edge would keep its mean gradient (see `metrics`).
    y, x = np.mgrid[0:256, 0:256]
    image = noisy(np.where((y // 8 + x // 8) % 2 == 0, 1000.0, 3000.0), 5)
    assert metrics(box_blur(image))["sharpness"] < 0.75 * metrics(image)["sharpness"]


@pytest.mark.filterwarnings("error")
@pytest.mark.parametrize("shape", [(1, 1), (1, 50), (2, 2), (3, 3), (8, 8)])
@pytest.mark.parametrize("kind", ["constant", "random"])
@pytest.mark.parametrize("bits_stored", [None, 12])
def test_tiny_and_constant_images_give_finite_values_without_warnings(shape, kind, bits_stored):
    if kind == "constant":
        image = np.full(shape, 7.0)
    else:
        image = np.random.default_rng(3).integers(0, 4096, shape).astype(np.float32)
    values = metrics(image, bits_stored=bits_stored)
    assert all(type(v) is float and math.isfinite(v) for v in values.values())
    assert 0.0 <= values["contrast"] <= 1.0
    assert 0.0 <= values["exposure"] <= 1.0


def test_metrics_want_a_2d_image():
    with pytest.raises(ValueError):
        metrics(np.zeros((4, 4, 3)))
    with pytest.raises(ValueError):
        metrics(np.zeros((0, 4)))


# Checks


def test_checks_cover_the_limited_metrics_that_were_measured():
    limits = {"std": (1e-6, None), "exposure": (0.05, 0.95), "contrast": (0.05, None), "absent": (0, 1)}
    results = checks({"std": 12.345678, "exposure": 0.97, "contrast": 0.01, "noise": 0.5}, limits)
    assert results == [
        {"check": "std", "passed": True, "value": 12.3457, "detail": ""},
        {"check": "exposure", "passed": False, "value": 0.97, "detail": "above 0.95"},
        {"check": "contrast", "passed": False, "value": 0.01, "detail": "below 0.05"},
    ]


def test_modality_limits_extend_the_general_ones():
    dx = limits_for("DX")
    assert dx["saturation"] == DEFAULT_LIMITS["*"]["saturation"]
    assert dx["exposure"] == (0.05, 0.95)
    assert limits_for("MR") == DEFAULT_LIMITS["*"]
