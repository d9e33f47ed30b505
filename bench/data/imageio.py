"""Reading and writing radiographs and label maps.

Radiographs are returned bone-bright as float32 in [0, 1] together with the pixel spacing
when the file states one. Generated data is written as 16-bit grayscale PNG.

Conventions of :func:`read_image` (the format is recognised from the file's content, so DICOM
files without an extension work, with or without the 128-byte preamble: :func:`looks_like_bare_dicom`;
an empty file is refused as such):

- PNG / JPEG (Pillow) and TIFF (tifffile; Pillow when tifffile cannot decode the compression,
  e.g. LZW or PackBits without imagecodecs), 8 or 16 bit: integer values are divided by the
  largest value of the stored bit depth (TIFF BitsPerSample, else the dtype), colour channels
  alike before they are averaged to gray (alpha dropped); float TIFFs already in [0, 1] are
  kept, others are min-max scaled. A palette TIFF's colour map is applied. TIFF "min-is-white"
  photometry is inverted; EXIF/TIFF orientation is applied. Pixel spacing comes from the stated
  resolution (PNG pHYs, JPEG JFIF, TIFF X/YResolution) unless it is a placeholder (72 or 96
  dpi, or no physical unit). 12-bit data in a 16-bit file is divided by 65535 like any 16-bit
  data (:func:`looks_12_bit` tells when an image may be such data). A TIFF holds one radiograph:
  several full-resolution pages are refused, as multi-frame DICOM is; reduced-resolution pages
  (pyramid levels, thumbnails: NewSubfileType bit 0) are skipped (:func:`tiff_image_page`).
- DICOM (pydicom): bench.data.dicom_pixels (modality LUT / rescale, then the VOI LUT or window
  centre/width, MONOCHROME1 inverted; pixel spacing from PixelSpacing, else ImagerPixelSpacing).
  The patient and series tags the importer can use are kept in ``Radiograph.header``
  (bench.data.dicom_fields).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

from bench.errors import BenchError, brief

#: Resolutions (dpi, +-0.5 for PNG's pixels-per-metre rounding) that image writers put in by
#: default; they say nothing about the detector.
PLACEHOLDER_DPI: tuple[float, ...] = (1.0, 72.0, 96.0)


@dataclass
class Radiograph:
    pixels: np.ndarray               # float32 H x W in [0, 1], bone bright
    pixel_spacing_mm: float | None   # row spacing in mm, when the file says
    bit_depth: int                   # stored bits of the source
    header: dict[str, str] = field(default_factory=dict)  # DICOM: patient/series tags (bench.data.dicom_fields)
    file_format: str = ""            # 'png' | 'jpeg' | 'tiff' | 'dicom' (bench.data.imageio.sniff_format)


def write_png16(path: Path, image: np.ndarray) -> None:
    """Write a float image in [0, 1] (or a uint16 array) as a 16-bit grayscale PNG."""
    if image.dtype != np.uint16:
        image = np.round(np.clip(image, 0.0, 1.0) * 65535.0).astype(np.uint16)
    Image.fromarray(image).save(path, format="PNG", optimize=False)


def write_label_map(path: Path, labels: np.ndarray) -> None:
    """Write a uint8 label map as an 8-bit grayscale PNG."""
    Image.fromarray(np.ascontiguousarray(labels, dtype=np.uint8), mode="L").save(path, format="PNG")


def read_label_map(path: Path) -> np.ndarray:
    """Read a uint8 label map; unreadable files raise BenchError naming the file."""
    try:
        with Image.open(path) as im:
            arr = np.asarray(im)
    except (OSError, ValueError) as exc:
        raise BenchError(f"cannot read label map {path}: {exc}") from exc
    if arr.ndim != 2:
        raise BenchError(f"label map {path} has shape {arr.shape}; expected a single-channel image")
    return arr.astype(np.uint8)


#: DICOM value representations (PS3.5 6.2), as the two bytes an explicit-VR element carries.
_DICOM_VRS = frozenset(b"AE AS AT CS DA DS DT FD FL IS LO LT OB OD OF OL OV OW PN SH SL SQ SS ST SV TM "
                       b"UC UI UL UN UR US UT UV".split())
_LONG_VRS = frozenset(b"OB OD OF OL OV OW SQ UC UN UR UT UV".split())  # 2 reserved bytes, 4-byte length


def looks_like_bare_dicom(head: bytes) -> bool:
    """True when `head` starts like a DICOM file written without the 128-byte preamble and 'DICM':
    a first element of group 0002 (file meta, explicit VR little endian) or 0008 (a data set
    without file meta, explicit or implicit VR little endian) with a well-formed header. DICOM
    values have even lengths; a bare data set's first elements are the (0008,00xx) identifiers."""
    if len(head) < 12:
        return False
    group, element = int.from_bytes(head[0:2], "little"), int.from_bytes(head[2:4], "little")
    if group not in (0x0002, 0x0008) or element >= 0x0100:
        return False
    vr = head[4:6]
    if vr in _DICOM_VRS:   # explicit VR
        if vr in _LONG_VRS:
            length = int.from_bytes(head[8:12], "little")
            return head[6:8] == b"\x00\x00" and (length % 2 == 0 or length == 0xFFFFFFFF)
        return int.from_bytes(head[6:8], "little") % 2 == 0
    length = int.from_bytes(head[4:8], "little")   # implicit VR (data sets only: file meta is explicit)
    return (group == 0x0008 and 0 < length <= 1024 and length % 2 == 0
            and (element != 0 or length == 4))        # a group length (gggg,0000) is a 4-byte UL


def sniff_format(path: Path) -> str:
    """'png' | 'jpeg' | 'tiff' | 'dicom' | 'unknown', from the first bytes (extension as fallback)."""
    with open(path, "rb") as fh:
        head = fh.read(132)
    if head.startswith(b"\x89PNG\r\n\x1a\n"):
        return "png"
    if head.startswith(b"\xff\xd8\xff"):
        return "jpeg"
    if head[:4] in (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+"):
        return "tiff"
    if head[128:132] == b"DICM" or looks_like_bare_dicom(head):
        return "dicom"
    if path.suffix.lower() in (".dcm", ".dicom", ".dic"):
        return "dicom"  # DICOM without the preamble: pydicom reads it with force=True
    return "unknown"


def read_image(path: Path) -> Radiograph:
    """Read a PNG, JPEG, TIFF (8/16-bit) or DICOM radiograph as a bone-bright float32 image.

    Unreadable or unsupported files raise BenchError naming the file.
    """
    path = Path(path)
    try:
        kind = sniff_format(path)
        empty = path.stat().st_size == 0
    except OSError as exc:
        raise BenchError(f"cannot read image {path}: {exc}") from exc
    if empty:
        raise BenchError(f"cannot read image {path}: the file is empty (0 bytes); copy or export it again")
    reader = {"png": _read_pillow, "jpeg": _read_pillow, "tiff": _read_tiff,
              "dicom": _read_dicom}.get(kind)
    if reader is None:
        raise BenchError(f"cannot read image {path}: not a PNG, JPEG, TIFF or DICOM file "
                         "(convert it to one of these)")
    try:
        rad = reader(path)
    except BenchError:
        raise
    except Exception as exc:  # decoder libraries raise many types for corrupt files
        raise BenchError(f"cannot read image {path} ({kind}): {brief(exc)}") from exc
    if rad.pixels.ndim != 2 or min(rad.pixels.shape) < 1:
        raise BenchError(f"image {path} has shape {rad.pixels.shape}; expected one 2-D grayscale image")
    if not np.isfinite(rad.pixels).all():
        raise BenchError(f"image {path} contains NaN or infinite pixel values")
    rad.pixels = np.ascontiguousarray(np.clip(rad.pixels, 0.0, 1.0), dtype=np.float32)
    rad.file_format = kind
    return rad


def looks_12_bit(rad: Radiograph) -> bool:
    """True for a 16-bit PNG/TIFF whose values all lie below 4096: likely 12-bit detector data,
    which the 65535 scaling shows 16x darker than intended."""
    return (rad.file_format in ("png", "tiff") and rad.bit_depth == 16
            and 0 < float(rad.pixels.max()) * 65535.0 < 4095.5)


def _read_dicom(path: Path) -> Radiograph:
    from bench.data.dicom_pixels import read_dicom

    return read_dicom(path)


def _to_gray(arr: np.ndarray, has_alpha: bool) -> np.ndarray:
    """Average colour channels (dropping alpha) to one gray channel."""
    if arr.ndim == 3:
        channels = arr.shape[-1] - (1 if has_alpha and arr.shape[-1] in (2, 4) else 0)
        arr = arr[..., :channels].astype(np.float64).mean(axis=-1)
    return arr


def integer_scale(arr: np.ndarray, bits: int | None) -> tuple[np.ndarray, int]:
    """Integer array -> [0, 1] by the stored bit depth (unsigned) or the dtype range (signed)."""
    info = np.iinfo(arr.dtype)
    if info.min < 0:
        return (arr.astype(np.float64) - info.min) / (info.max - info.min), info.bits
    bits = bits if bits and 0 < bits <= info.bits else info.bits
    return arr.astype(np.float64) / float(2 ** bits - 1), bits


def _spacing_from_dpi(dpi: object) -> float | None:
    """Row pixel spacing (mm) from a (x, y) dpi pair, None for placeholders."""
    try:
        y = float(dpi[1])  # type: ignore[index]
    except (TypeError, ValueError, IndexError):
        return None
    if not np.isfinite(y) or y <= 0 or any(abs(y - p) < 0.5 for p in PLACEHOLDER_DPI):
        return None
    return 25.4 / y


def _read_pillow(path: Path) -> Radiograph:
    with Image.open(path) as im:
        im.load()
        im = ImageOps.exif_transpose(im)
        dpi = im.info.get("dpi")
        mode = im.mode
        if mode == "P":
            im = im.convert("RGBA" if "transparency" in im.info else "RGB")
            mode = im.mode
        if mode == "1":
            im = im.convert("L")
            mode = "L"
        if mode == "CMYK":
            im = im.convert("RGB")
            mode = "RGB"
        arr = np.asarray(im)
    spacing = _spacing_from_dpi(dpi)
    if mode in ("I", "I;16", "I;16B", "I;16L") or arr.dtype in (np.uint16, np.int32):
        # 16-bit gray; Pillow may hand it over as int32 ("I")
        if arr.dtype != np.uint16:
            if arr.min() < 0 or arr.max() > 65535:
                raise BenchError(f"image {path} has {arr.dtype} values outside 0..65535")
            arr = arr.astype(np.uint16)
        pixels, bits = integer_scale(arr, 16)
        return Radiograph(pixels.astype(np.float32), spacing, bits)
    if mode == "F":
        return Radiograph(_float_scale(arr), spacing, 32)
    arr = _to_gray(arr, has_alpha=mode in ("LA", "RGBA", "PA"))
    if arr.dtype != np.uint8:
        arr = arr / 255.0
    else:
        arr = arr.astype(np.float64) / 255.0
    return Radiograph(arr.astype(np.float32), spacing, 8)


def _float_scale(arr: np.ndarray) -> np.ndarray:
    """Float data kept when already in [0, 1], else min-max scaled."""
    arr = arr.astype(np.float64)
    finite = arr[np.isfinite(arr)]
    if finite.size and (finite.min() < 0 or finite.max() > 1):
        lo, hi = float(finite.min()), float(finite.max())
        arr = (arr - lo) / (hi - lo) if hi > lo else np.zeros_like(arr)
    return arr.astype(np.float32)


_TIFF_ORIENT = {  # TIFF Orientation tag -> numpy operations giving top-left origin
    1: lambda a: a, 2: lambda a: a[:, ::-1], 3: lambda a: a[::-1, ::-1], 4: lambda a: a[::-1],
    5: lambda a: a.swapaxes(0, 1), 6: lambda a: np.rot90(a, -1), 7: lambda a: np.rot90(a, 1)[::-1],
    8: lambda a: np.rot90(a, 1),
}


def _read_tiff(path: Path) -> Radiograph:
    import tifffile

    with tifffile.TiffFile(path) as tif:
        index = tiff_image_page(path, tif)
        page = tif.pages[index]
        tags = {t.name: t.value for t in page.tags.values()}
        try:
            arr, pillow = page.asarray(), False
        except Exception as exc:  # a compression tifffile cannot decode here (LZW, PackBits: imagecodecs)
            try:
                arr, pillow = _tiff_via_pillow(path, index), True
            except Exception:
                raise exc from None   # neither can: tifffile's reason is the more telling
    photometric = int(tags.get("PhotometricInterpretation", 1))
    bits = tags.get("BitsPerSample")
    bits = int(bits[0] if isinstance(bits, tuple) else bits) if bits is not None else None
    if pillow:
        bits = None  # Pillow widens 1-, 2- and 4-bit data to 8 bit: scale by its dtype
        if photometric == 0 and arr.dtype in (np.bool_, np.uint8):  # Pillow inverted these already
            arr = ~arr if arr.dtype == np.bool_ else 255 - arr
    if photometric == 3:  # palette: look the colours up
        arr, bits = _apply_colormap(path, arr, tags.get("ColorMap"))
    extra = tags.get("ExtraSamples", ())
    has_alpha = bool(extra) if not isinstance(extra, int) else True
    if np.issubdtype(arr.dtype, np.integer):
        pixels, bits = integer_scale(arr, bits)
        pixels = _to_gray(pixels, has_alpha)
    elif arr.dtype == np.bool_:
        pixels, bits = _to_gray(arr, has_alpha).astype(np.float64), 1
    else:
        pixels = _float_scale(_to_gray(arr, has_alpha)).astype(np.float64)
        bits = 8 * arr.dtype.itemsize
    if photometric == 0:  # WhiteIsZero: low values are bright
        pixels = 1.0 - pixels
    pixels = _TIFF_ORIENT.get(int(tags.get("Orientation", 1)), _TIFF_ORIENT[1])(pixels)
    return Radiograph(np.ascontiguousarray(pixels, dtype=np.float32), _tiff_spacing(tags), int(bits))


def tiff_image_page(path: Path, tif) -> int:
    """Index of the one full-resolution page of a TIFF; BenchError when there are several.

    Pages flagged as reduced-resolution copies (NewSubfileType bit 0: pyramid levels, thumbnails)
    are not images of their own; a file of only such pages gives its first page.
    """
    pages = list(tif.pages)
    full = [i for i, pg in enumerate(pages) if not int(getattr(pg, "subfiletype", 0) or 0) & 1]
    if len(full) > 1:
        raise BenchError(f"TIFF file {path} has {len(full)} pages (images); expected a single radiograph "
                         "(save the page you want as its own file)")
    return full[0] if full else 0


def _tiff_via_pillow(path: Path, index: int = 0) -> np.ndarray:
    """Page `index`'s stored samples decoded by Pillow (no orientation, palette kept as indices)."""
    with Image.open(path) as im:
        im.seek(index)
        im.load()
        return np.asarray(im)


def _apply_colormap(path: Path, index: np.ndarray, colormap: object) -> tuple[np.ndarray, int]:
    """Palette indices -> RGB by the TIFF ColorMap (3 x 2**bits, 16-bit values; 8-bit maps as some
    writers store them are recognised by their maximum)."""
    cmap = np.asarray(colormap) if colormap is not None else None
    if cmap is None or cmap.ndim != 2 or cmap.shape[0] != 3 or index.ndim != 2 \
            or not np.issubdtype(index.dtype, np.integer) or int(index.max()) >= cmap.shape[1]:
        raise BenchError(f"cannot read image {path}: a palette TIFF whose colour map does not fit its "
                         "pixels; save it as a grayscale TIFF or PNG")
    rgb = np.moveaxis(cmap[:, index], 0, -1).astype(np.uint16)
    return rgb, (8 if int(cmap.max()) < 256 else 16)


def _tiff_spacing(tags: dict) -> float | None:
    """Row spacing from YResolution when ResolutionUnit is inch (2) or centimetre (3)."""
    unit, res = int(tags.get("ResolutionUnit", 2)), tags.get("YResolution")
    if res is None or unit not in (2, 3):
        return None
    num, den = res if isinstance(res, tuple) else (res, 1)
    if not den or num <= 0:
        return None
    dpi = num / den * (1.0 if unit == 2 else 2.54)
    return _spacing_from_dpi((dpi, dpi))
