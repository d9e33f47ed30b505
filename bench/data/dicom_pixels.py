"""DICOM pixel data -> a bone-bright float image (the DICOM part of bench.data.imageio.read_image).

Pipeline (DICOM PS3.3 C.11): the modality LUT or rescale (pydicom ``apply_modality_lut``), then
the VOI LUT (applied here, C.11.2.1.1) or else the window centre/width (pydicom
``apply_windowing``, C.11.2.1.2), then the VOI output range is mapped to [0, 1]; without VOI the
rescaled stored-bit range is. MONOCHROME1 is inverted so bone is bright.

VOI LUT: descriptor (entries, 0 meaning 65536; first input value mapped; bits per entry). Inputs
below the first value map to the first entry, inputs past the last entry to the last entry; the
output range is 0 .. 2**bits - 1. The first value is read as signed (two's complement) when the
pixel data is signed and the descriptor was stored as US.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from bench.errors import BenchError


def read_dicom(path: Path):
    """A :class:`bench.data.imageio.Radiograph` from a single-frame DICOM file."""
    import pydicom

    from bench.data.dicom_fields import read_header
    from bench.data.imageio import Radiograph, integer_scale

    try:  # pydicom >= 3
        from pydicom.pixels import apply_modality_lut, apply_windowing
    except ImportError:  # pydicom 2.x
        from pydicom.pixel_data_handlers.util import apply_modality_lut, apply_windowing
    ds = pydicom.dcmread(path, force=True)
    if "PixelData" not in ds:
        raise BenchError(f"DICOM file {path} has no pixel data (is it a DICOMDIR or a report?)")
    frames = int(ds.get("NumberOfFrames", 1) or 1)
    if frames > 1:
        raise BenchError(f"DICOM file {path} has {frames} frames; expected a single radiograph "
                         "(export the frame you want as its own file)")
    set_native_transfer_syntax(ds)
    try:
        stored, photometric = decode_pixels(ds)
    except Exception as exc:
        ts = getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", None)
        if ts is not None and not ts.is_compressed:
            raise BenchError(f"cannot decode the pixel data of DICOM file {path} (uncompressed, transfer "
                             f"syntax {ts}): {exc}; the file looks truncated or damaged: copy or export "
                             "it again") from exc
        raise BenchError(f"cannot decode the pixel data of DICOM file {path} (transfer syntax "
                         f"{ts or 'unknown'}): {exc}; install a decoder plugin (e.g. pylibjpeg, "
                         "pylibjpeg-libjpeg, pylibjpeg-openjpeg) or export it uncompressed") from exc
    if photometric not in ("MONOCHROME1", "MONOCHROME2"):
        if stored.ndim == 3 and photometric in ("RGB", "YBR_FULL", "YBR_FULL_422"):
            try:
                from pydicom.pixels import convert_color_space
            except ImportError:  # pydicom 2.x
                from pydicom.pixel_data_handlers.util import convert_color_space

            rgb = convert_color_space(stored, photometric, "RGB") if photometric != "RGB" else stored
            pixels, bits = integer_scale(rgb, None)
            return Radiograph(pixels.mean(axis=-1).astype(np.float32), dicom_spacing(ds), bits, read_header(ds))
        raise BenchError(f"DICOM file {path} has photometric interpretation {photometric}; "
                         "expected MONOCHROME1 or MONOCHROME2 (a grayscale radiograph)")
    values = apply_modality_lut(stored, ds)
    y_min, y_max = modality_range(ds)
    voi = voi_kind(ds)
    if voi == "lut":
        values, hi = apply_voi_lut_item(values, ds.VOILUTSequence[0], ds, path)
        lo = 0.0
    elif voi == "window":
        values = apply_windowing(values, ds)
        lo, hi = y_min, y_max   # window output spans y_min..y_max, unsorted for a negative slope
    else:
        lo, hi = min(y_min, y_max), max(y_min, y_max)
    values = np.asarray(values, dtype=np.float64)
    pixels = (values - lo) / (hi - lo) if hi != lo else np.zeros_like(values)
    if photometric == "MONOCHROME1":
        pixels = 1.0 - pixels
    return Radiograph(pixels.astype(np.float32), dicom_spacing(ds), int(ds.get("BitsStored", 16)), read_header(ds))


def decode_pixels(ds) -> tuple[np.ndarray, str]:
    """The decoded pixel array and the photometric interpretation its values are in.

    A decoder may convert YBR to RGB itself (pydicom 3 does by default, and so does Pillow's JPEG
    decoder); the file's PhotometricInterpretation still says YBR then, so converting again would
    distort the intensities. pydicom 3's decoder reports the interpretation of its output; pydicom
    2's handlers update the dataset's element when they convert.
    """
    photometric = str(ds.get("PhotometricInterpretation", "MONOCHROME2")).upper()
    ts = getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", None)
    try:  # pydicom >= 3
        from pydicom.pixels import get_decoder
        from pydicom.pixels.utils import as_pixel_options
    except ImportError:  # pydicom 2.x
        stored = ds.pixel_array
        return stored, str(ds.get("PhotometricInterpretation", photometric)).upper()
    if ts is None:
        return ds.pixel_array, photometric   # pydicom says what is missing
    stored, meta = get_decoder(ts).as_array(ds, validate=True, **as_pixel_options(ds))
    return stored, str(meta.get("photometric_interpretation", photometric)).upper()


def set_native_transfer_syntax(ds) -> None:
    """Give a data set read without file meta information (no preamble, no group 0002) the
    transfer syntax pydicom detected while reading it; such a data set is stored natively
    (uncompressed), so its encoding is the whole transfer syntax."""
    from pydicom.dataset import FileMetaDataset
    from pydicom.uid import ExplicitVRBigEndian, ExplicitVRLittleEndian, ImplicitVRLittleEndian

    meta = getattr(ds, "file_meta", None)
    if meta is not None and meta.get("TransferSyntaxUID"):
        return
    implicit, little = getattr(ds, "original_encoding", None) or (ds.is_implicit_VR, ds.is_little_endian)
    if implicit is None or little is None:
        return
    if meta is None:
        ds.file_meta = meta = FileMetaDataset()
    meta.TransferSyntaxUID = (ImplicitVRLittleEndian if implicit else
                              ExplicitVRLittleEndian if little else ExplicitVRBigEndian)


def apply_voi_lut_item(values: np.ndarray, item, ds, path: Path) -> tuple[np.ndarray, float]:
    """Apply one VOI LUT Sequence item (module docstring); returns (output, largest possible output)."""
    desc = [int(v) for v in item.LUTDescriptor]
    if len(desc) != 3:
        raise BenchError(f"DICOM file {path}: the VOI LUT descriptor {desc} needs 3 values "
                         "(entries, first value mapped, bits); export the image without its VOI LUT")
    entries, first, bits = desc[0] or 65536, desc[1], desc[2]
    if not 1 <= bits <= 16:
        raise BenchError(f"DICOM file {path}: the VOI LUT has {bits} bits per entry; expected 8 to 16")
    if item["LUTDescriptor"].VR == "US" and first >= 2 ** 15 and int(ds.get("PixelRepresentation", 0)) == 1:
        first -= 2 ** 16
    data = lut_data(item, entries, ds)
    if data.size < entries:
        raise BenchError(f"DICOM file {path}: the VOI LUT has {data.size} entries but its descriptor "
                         f"says {entries}; export the image without its VOI LUT, or with a window")
    index = np.rint(np.asarray(values, dtype=np.float64)).astype(np.int64) - first
    return data[np.clip(index, 0, entries - 1)], float(2 ** bits - 1)


def lut_data(item, entries: int, ds) -> np.ndarray:
    """LUT Data as int64: a list of US values, or OW bytes (16-bit words in the file's byte order)."""
    elem = item["LUTData"]
    if elem.VR == "OW" or isinstance(elem.value, (bytes, bytearray)):
        little = (getattr(ds, "original_encoding", None) or (None, True))[1] is not False
        words = np.frombuffer(bytes(elem.value), dtype="<u2" if little else ">u2")
        return words[:entries].astype(np.int64)
    return np.atleast_1d(np.asarray(elem.value, dtype=np.int64))[:entries]


def modality_range(ds) -> tuple[float, float]:
    """(y_min, y_max) of the modality transform as pydicom's windowing uses them (PS3.3 C.11.2.1.2):
    the stored-bit range, rescaled (unsorted for a negative slope) or the modality LUT's range."""
    if ds.get("ModalityLUTSequence"):
        return 0.0, float(2 ** int(ds.ModalityLUTSequence[0].LUTDescriptor[2]) - 1)
    bits = int(ds.get("BitsStored", 16))
    if int(ds.get("PixelRepresentation", 0)) == 0:
        lo, hi = 0.0, float(2 ** bits - 1)
    else:
        lo, hi = float(-(2 ** (bits - 1))), float(2 ** (bits - 1) - 1)
    slope, intercept = ds.get("RescaleSlope"), ds.get("RescaleIntercept")
    if slope is not None and intercept is not None:
        lo, hi = lo * float(slope) + float(intercept), hi * float(slope) + float(intercept)
    return lo, hi


def voi_kind(ds) -> str | None:
    """'lut' | 'window' | None: the VOI transform applied (a VOI LUT is preferred, as pydicom does)."""
    seq = ds.get("VOILUTSequence")
    if seq and seq[0].get("LUTDescriptor") is not None and seq[0].get("LUTData") is not None:
        return "lut"
    if ds.get("WindowCenter") is not None and ds.get("WindowWidth") is not None:
        return "window"
    return None


def dicom_spacing(ds) -> float | None:
    """Row pixel spacing (mm): PixelSpacing, else ImagerPixelSpacing. Pixels are taken as square: a
    column spacing more than 2 % away from the row spacing is warned about (bone lengths across the
    columns are then off by that much)."""
    for key in ("PixelSpacing", "ImagerPixelSpacing"):
        value = ds.get(key)
        if value is not None:
            pair = hasattr(value, "__len__") and not isinstance(value, str)
            try:
                spacing = float(value[0] if pair else value)
            except (TypeError, ValueError, IndexError):
                continue
            if spacing > 0 and np.isfinite(spacing):
                _warn_anisotropic(key, spacing, value, pair, ds)
                return spacing
    return None


def _warn_anisotropic(key: str, row: float, value, pair: bool, ds) -> None:
    import warnings

    try:
        column = float(value[1]) if pair and len(value) > 1 else row
    except (TypeError, ValueError):
        return
    if column > 0 and abs(column / row - 1) > 0.02:
        source = getattr(ds, "filename", None) or "a DICOM file"
        warnings.warn(f"{source}: {key} {row:g} x {column:g} mm is not square; osteobench takes pixels as square "
                      f"and uses the row spacing {row:g} mm (sizes across the columns are off by "
                      f"{abs(column / row - 1):.0%}); resample the image to square pixels if that matters",
                      stacklevel=3)
