"""Pure pixel checks over one image of a study: decode a bounded sample, measure it, compare with limits.

No Django and no database: the caller picks the file, stores the values and turns failing checks into
flags. Like the header checks, a failing check flags; it never drops.
"""

import math
from pathlib import Path

import numpy as np
import pydicom
from pydicom.dataset import Dataset
from pydicom.pixels import apply_color_lut, apply_rescale, get_decoder

Limits = dict[str, tuple[float | None, float | None]]

IMAGE_SIZE_ATTRIBUTES = ("Rows", "Columns", "BitsAllocated")

# Rec. 601 luma weights: the same Y that JPEG's YCbCr carries, so RGB and YBR images measure alike.
LUMA_WEIGHTS = (0.299, 0.587, 0.114)

# Below this share of the pixels, the image's own extreme is just its brightest (darkest) detail,
# not a plateau of saturated (clipped) pixels. Only used when the stored range is unknown.
TRIVIAL_FRACTION = 0.01

BORDER_FRACTION = 0.05
# An empty centre with content at the border would be an infinite ratio: stored values stay finite.
EDGE_CONTENT_CAP = 100.0

# Gaussian sigma from the median absolute deviation; 6 is the L2 norm of Immerkaer's mask.
MAD_TO_SIGMA = 1.4826
MASK_NORM = 6.0

# Starting points, not clinical truth: an admin edits them per site (values are fractions of the
# stored range or of the image's p1..p99 spread, see `metrics`). "*" applies to every modality.
DEFAULT_LIMITS: dict[str, Limits] = {
    "*": {
        "std": (1e-6, None),
        "saturation": (None, 0.05),
        "clipping": (None, 0.5),
    },
    "CR": {
        "exposure": (0.05, 0.95),
        "contrast": (0.05, None),
        "edge_content": (None, 1.5),
        "noise": (None, 0.1),
    },
    "DX": {
        "exposure": (0.05, 0.95),
        "contrast": (0.05, None),
        "edge_content": (None, 1.5),
        "noise": (None, 0.1),
    },
}


def limits_for(modality: str, table: dict[str, Limits] = DEFAULT_LIMITS) -> Limits:
    """The "*" limits, overridden metric by metric by the modality's own."""
    return {**table.get("*", {}), **table.get(modality, {})}


def decoded_size(header: Dataset) -> int:
    """Bytes the decoded pixel data would take, from the header alone."""
    frames = int(header.get("NumberOfFrames") or 1)
    samples = int(header.get("SamplesPerPixel") or 1)
    return int(header.Rows) * int(header.Columns) * samples * frames * math.ceil(int(header.BitsAllocated) / 8)


def not_decoded(exc: Exception) -> str:
    # One line and bounded: the reason is shown in lists and logs. pydicom converts values only when
    # they are read and we read only file meta and image attributes, so a message may quote those
    # (a bad NumberOfFrames, a codec error) but not patient attributes.
    message = " ".join(str(exc).split())[:300]
    return f"not decoded: {type(exc).__name__}: {message}"


def luminance(frame: np.ndarray, photometric: str) -> np.ndarray:
    if frame.ndim == 2:
        return frame
    if photometric.startswith("YBR"):
        return frame[..., 0]
    red, green, blue = (frame[..., i].astype(np.float64) for i in range(3))
    return LUMA_WEIGHTS[0] * red + LUMA_WEIGHTS[1] * green + LUMA_WEIGHTS[2] * blue


def sample_plane(ds: Dataset) -> np.ndarray:
    """One luminance plane: the middle frame, colour reduced to luma, monochrome rescaled."""
    frames = int(ds.get("NumberOfFrames") or 1)
    index = frames // 2 if frames > 1 else None
    # The decoder, not `ds.pixel_array`: it decodes only the frame we measure, and its metadata says
    # what the array holds. pydicom converts YBR_FULL(_422) to RGB but leaves the dataset's
    # PhotometricInterpretation saying YBR, so reading the header would take R for Y.
    frame, meta = get_decoder(ds.file_meta.TransferSyntaxUID).as_array(ds, index=index)
    photometric = str(meta.get("photometric_interpretation", ds.PhotometricInterpretation))
    if photometric == "PALETTE COLOR":
        # Indices into a lookup table measure nothing: look the colours up first.
        frame, photometric = apply_color_lut(frame, ds), "RGB"
    plane = luminance(frame, photometric)
    if photometric.startswith("MONOCHROME"):
        # Modality LUT or RescaleSlope/Intercept; colour images have none.
        plane = apply_rescale(plane, ds)
    return np.asarray(plane, dtype=np.float32)


def decode_sample(path: Path, *, max_bytes: int) -> tuple[np.ndarray | None, str]:
    """A 2-D float32 plane of the image at `path` and "", or None and why not.

    The header is read first and sizes the pixel data, so an oversized image is refused without
    reading its pixels. The plane is rescaled (modality values, e.g. HU): pass `bits_stored` to
    `metrics` only for planes whose values are still stored values (slope 1, intercept 0).
    """
    # This is the boundary with sender-controlled bytes: whatever pydicom, numpy or a codec plugin
    # raises (missing plugin, corrupt or truncated data, absurd header values) becomes a reason,
    # never an exception in the pipeline.
    try:
        header = pydicom.dcmread(path, stop_before_pixels=True)
        if any(keyword not in header for keyword in IMAGE_SIZE_ATTRIBUTES):
            return None, "not decoded: not an image (Rows, Columns or BitsAllocated missing)"
        size = decoded_size(header)
    except Exception as exc:
        return None, not_decoded(exc)
    if size > max_bytes:
        return None, f"not decoded: {size} bytes would exceed the {max_bytes} limit"
    try:
        plane = sample_plane(pydicom.dcmread(path))
    except Exception as exc:
        return None, not_decoded(exc)
    if not np.isfinite(plane).all():
        # Float pixel data may hold NaN or infinities; every metric would be meaningless.
        return None, "not decoded: non-finite pixel values"
    return plane, ""


def stored_range(bits_stored: int | None, pixel_representation: int) -> tuple[float, float] | None:
    if not bits_stored:
        return None
    if pixel_representation == 1:
        return -(2.0 ** (bits_stored - 1)), 2.0 ** (bits_stored - 1) - 1
    return 0.0, 2.0**bits_stored - 1


def ratio(numerator: float, denominator: float) -> float:
    return float(numerator / denominator) if denominator > 0 else 0.0


def share_at(at_limit: np.ndarray, *, range_known: bool) -> float:
    share = float(at_limit.mean())
    if range_known:
        return share
    # With the image's own extreme as the limit, a few pixels are always there.
    return share if share > TRIVIAL_FRACTION else 0.0


def noise_sigma(img: np.ndarray) -> float:
    """Immerkaer's estimate with a median absolute deviation, robust to edges and structure.

    The mask [[1,-2,1],[-2,4,-2],[1,-2,1]] cancels anything linear along either axis, so what is left
    is mostly noise; the median keeps the strong responses at real edges out of the estimate. On
    quantised images with large flat areas the median can be 0 although the anatomy is noisy.
    """
    if min(img.shape) < 3:
        return 0.0
    response = (
        img[:-2, :-2]
        + img[:-2, 2:]
        + img[2:, :-2]
        + img[2:, 2:]
        - 2 * (img[:-2, 1:-1] + img[2:, 1:-1] + img[1:-1, :-2] + img[1:-1, 2:])
        + 4 * img[1:-1, 1:-1]
    )
    mad = np.median(np.abs(response - np.median(response)))
    return float(MAD_TO_SIGMA * mad / MASK_NORM)


def mean_gradient(img: np.ndarray) -> float:
    """Mean gradient magnitude. Blurring a lone, clean step edge keeps it (the step's total variation
    is the same however wide): it falls with the loss of fine detail and noise, as in real images."""
    if min(img.shape) < 2:
        return 0.0
    dy, dx = np.gradient(img)
    return float(np.hypot(dy, dx).mean())


def edge_content(img: np.ndarray, floor: float) -> float:
    """Mean intensity above `floor` in a border band over the same in the centre half."""
    rows, cols = img.shape
    above = np.clip(img - floor, 0, None)
    band_rows, band_cols = max(1, round(rows * BORDER_FRACTION)), max(1, round(cols * BORDER_FRACTION))
    border = np.ones(img.shape, dtype=bool)
    border[band_rows : rows - band_rows, band_cols : cols - band_cols] = False
    border_mean = float(above[border].mean())
    centre_mean = float(above[rows // 4 : rows - rows // 4, cols // 4 : cols - cols // 4].mean())
    if centre_mean <= 0:
        return EDGE_CONTENT_CAP if border_mean > 0 else 0.0
    return min(border_mean / centre_mean, EDGE_CONTENT_CAP)


def metrics(image: np.ndarray, *, bits_stored: int | None = None, pixel_representation: int = 0) -> dict[str, float]:
    """Image quality measures of one 2-D plane, as plain floats.

    Ranges come from `bits_stored` and `pixel_representation` when given (stored values), else from
    the image's own min and max. Spatial measures (noise, sharpness) are divided by the p1..p99 spread
    so they compare across bit depths. Exposure is in stored-value terms: for MONOCHROME1 a high value
    is dark on screen.
    """
    img = np.asarray(image, dtype=np.float64)
    if img.ndim != 2 or img.size == 0:
        raise ValueError(f"metrics need a non-empty 2-D image, got shape {img.shape}")
    p1, p10, p99 = (float(p) for p in np.percentile(img, [1, 10, 99]))
    spread = p99 - p1
    known = stored_range(bits_stored, pixel_representation)
    low, high = known or (float(img.min()), float(img.max()))
    full = high - low
    constant = img.max() == img.min()
    # A constant image with no stored range has no evidence of saturation or clipping: "std" flags it.
    unknown_constant = known is None and constant
    return {
        "std": float(img.std()),
        "contrast": min(max(ratio(spread, full), 0.0), 1.0),
        "noise": ratio(noise_sigma(img), spread),
        "sharpness": ratio(mean_gradient(img), spread),
        "saturation": 0.0 if unknown_constant else share_at(img >= high, range_known=known is not None),
        "clipping": 0.0 if unknown_constant else share_at(img <= low, range_known=known is not None),
        "exposure": min(max(ratio(float(img.mean()) - low, full), 0.0), 1.0),
        "edge_content": edge_content(img, p10),
    }


def checks(values: dict[str, float], limits: Limits) -> list[dict]:
    """One result per limited metric that was measured; a missing bound is open."""
    results = []
    for name, (minimum, maximum) in limits.items():
        if name not in values:
            continue
        value = values[name]
        if not math.isfinite(value):
            detail = "not a finite number"
        elif minimum is not None and value < minimum:
            detail = f"below {minimum:g}"
        elif maximum is not None and value > maximum:
            detail = f"above {maximum:g}"
        else:
            detail = ""
        results.append({"check": name, "passed": detail == "", "value": round(value, 4), "detail": detail})
    return results
