"""DICOM decoding beyond grayscale: YBR colour converted exactly once, files without preamble or
extension recognised by content, empty and truncated files named as such (bench.data.dicom_pixels)."""
from __future__ import annotations

import numpy as np
import pydicom
import pytest
from PIL import Image
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

from bench import BenchError
from bench.data.imageio import read_image, sniff_format
from dicom_samples import bone_square, make_dicom


def _gray_ramp(shape=(32, 48)) -> np.ndarray:
    """An 8-bit gray picture spanning the range, with flat areas JPEG keeps nearly exact."""
    gray = np.repeat(np.linspace(20, 235, shape[1]).round().astype(np.uint8)[None], shape[0], axis=0)
    gray[:8, :8] = 250
    return gray


def _colour_dicom(path, photometric: str, pixel_data: bytes, shape, jpeg: bool) -> None:
    from pydicom.encaps import encapsulate
    from pydicom.uid import JPEGBaseline8Bit

    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.7"
    ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.file_meta.TransferSyntaxUID = JPEGBaseline8Bit if jpeg else ExplicitVRLittleEndian
    ds.SOPClassUID, ds.SOPInstanceUID = "1.2.840.10008.5.1.4.1.1.7", ds.file_meta.MediaStorageSOPInstanceUID
    ds.Rows, ds.Columns = shape
    ds.SamplesPerPixel, ds.PhotometricInterpretation, ds.PlanarConfiguration = 3, photometric, 0
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 8, 8, 7, 0
    ds.PixelData = encapsulate([pixel_data]) if jpeg else pixel_data
    if jpeg:
        ds["PixelData"].VR = "OB"
    ds.save_as(path, enforce_file_format=True)


def test_dicom_ybr_colour_is_converted_to_rgb_exactly_once(tmp_path):
    """A decoder may already return RGB for YBR data (pydicom 3, Pillow's JPEG decoder); converting
    again shifted a gray radiograph by ~0.13 (QA: YBR_FULL_422 JPEG baseline)."""
    import io

    gray = _gray_ramp()
    buf = io.BytesIO()
    Image.fromarray(np.stack([gray] * 3, -1)).save(buf, format="JPEG", quality=95, subsampling=1)  # 4:2:2
    _colour_dicom(tmp_path / "ybr422.dcm", "YBR_FULL_422", buf.getvalue(), gray.shape, jpeg=True)
    ybr = np.stack([gray, np.full_like(gray, 128), np.full_like(gray, 128)], -1)   # Y = gray, no chroma
    _colour_dicom(tmp_path / "ybr_full.dcm", "YBR_FULL", ybr.tobytes(), gray.shape, jpeg=False)
    for name, tol in (("ybr422.dcm", 3 / 255), ("ybr_full.dcm", 1.01 / 255)):
        rad = read_image(tmp_path / name)
        assert np.abs(rad.pixels - gray / 255.0).max() <= tol, name
        assert abs(float(rad.pixels.mean()) - gray.mean() / 255.0) < 0.5 / 255, name


def test_dicom_ybr_left_unconverted_by_the_decoder_is_converted_here(tmp_path, monkeypatch):
    import bench.data.dicom_pixels as dicom_pixels

    gray = _gray_ramp()
    ybr = np.stack([gray, np.full_like(gray, 128), np.full_like(gray, 128)], -1)
    _colour_dicom(tmp_path / "ybr_full.dcm", "YBR_FULL", ybr.tobytes(), gray.shape, jpeg=False)
    monkeypatch.setattr(dicom_pixels, "decode_pixels", lambda ds: (ybr, "YBR_FULL"))  # as pydicom 2 returns it
    rad = read_image(tmp_path / "ybr_full.dcm")
    assert np.abs(rad.pixels - gray / 255.0).max() <= 1.01 / 255


@pytest.mark.parametrize("kind", ["file meta, no preamble", "explicit VR data set", "implicit VR data set"])
def test_dicom_without_preamble_or_extension_is_recognised_by_content(tmp_path, kind):
    stored = bone_square()
    path = tmp_path / "IM0001"
    if kind == "file meta, no preamble":
        make_dicom(path, stored, preamble=False, PatientID="P7")
    else:
        make_dicom(tmp_path / "full.dcm", stored, PatientID="P7")
        ds = pydicom.dcmread(tmp_path / "full.dcm")
        del ds.file_meta
        ds.preamble = None
        ds.save_as(path, enforce_file_format=False, implicit_vr=kind.startswith("implicit"),
                   little_endian=True)
        assert path.read_bytes()[:2] == b"\x08\x00"          # a bare data set: no group 0002
    assert sniff_format(path) == "dicom"
    rad = read_image(path)
    np.testing.assert_allclose(rad.pixels, stored / 4095.0, atol=1e-6)
    assert rad.header.get("PatientID") == "P7"


@pytest.mark.parametrize("head", [b"\x08\x00\x00\x00" + bytes(8) + b"\x00\x00\xf0?",   # Fortran record of 8 bytes
                                  b"\x02\x00\x00\x00XY\x04\x00", b"hello world, not an image"])
def test_other_files_without_extension_are_not_taken_for_dicom(tmp_path, head):
    path = tmp_path / "blob"
    path.write_bytes(head + bytes(200))
    assert sniff_format(path) == "unknown"


def test_empty_and_truncated_dicom_messages_say_what_is_wrong(tmp_path):
    (tmp_path / "empty.dcm").write_bytes(b"")
    with pytest.raises(BenchError, match=r"empty.dcm: the file is empty \(0 bytes\)"):
        read_image(tmp_path / "empty.dcm")
    make_dicom(tmp_path / "full.dcm", bone_square((64, 64)))
    data = (tmp_path / "full.dcm").read_bytes()
    (tmp_path / "cut.dcm").write_bytes(data[: len(data) - 2000])
    with pytest.raises(BenchError, match="truncated or damaged") as err:
        read_image(tmp_path / "cut.dcm")
    assert "pylibjpeg" not in str(err.value) and "decoder" not in str(err.value)
