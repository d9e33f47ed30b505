"""read_image: PNG/JPEG/TIFF/DICOM polarity, orientation, scaling and pixel spacing."""
from __future__ import annotations

import numpy as np
import pydicom
import pytest
import tifffile
from PIL import Image
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

from bench import BenchError
from bench.data.imageio import read_image, sniff_format, write_png16
from dicom_samples import bone_square, make_dicom


def assert_bright_top_left(pixels: np.ndarray) -> None:
    assert pixels.dtype == np.float32 and pixels.min() >= 0 and pixels.max() <= 1
    assert pixels[:4, :5].min() > pixels[4:, :].max()
    assert pixels[:4, :5].min() > pixels[:, 5:].max()


def test_png_8_and_16_bit_exact_scaling(tmp_path):
    arr16 = bone_square(bone=60000, tissue=1234).astype(np.uint16)
    Image.fromarray(arr16).save(tmp_path / "a.png")
    rad = read_image(tmp_path / "a.png")
    assert rad.bit_depth == 16 and rad.pixel_spacing_mm is None
    np.testing.assert_allclose(rad.pixels, arr16 / 65535.0, rtol=1e-6)
    assert_bright_top_left(rad.pixels)

    arr8 = bone_square(bone=250, tissue=17).astype(np.uint8)
    Image.fromarray(arr8).save(tmp_path / "b.png", dpi=(254, 254))
    rad = read_image(tmp_path / "b.png")
    assert rad.bit_depth == 8 and rad.pixel_spacing_mm == pytest.approx(0.1, rel=1e-3)
    np.testing.assert_allclose(rad.pixels, arr8 / 255.0, rtol=1e-6)


def test_write_png16_roundtrip(tmp_path):
    img = np.linspace(0, 1, 48, dtype=np.float32).reshape(6, 8)
    write_png16(tmp_path / "x.png", img)
    np.testing.assert_allclose(read_image(tmp_path / "x.png").pixels, img, atol=1 / 65535)


def test_png_rgb_is_averaged_and_placeholder_dpi_ignored(tmp_path):
    rgb = np.zeros((12, 16, 3), np.uint8)
    rgb[:4, :5] = (240, 200, 160)
    rgb[4:, :, 0] = 30
    Image.fromarray(rgb).save(tmp_path / "c.png", dpi=(72, 72))
    rad = read_image(tmp_path / "c.png")
    assert rad.pixel_spacing_mm is None
    assert rad.pixels[0, 0] == pytest.approx(200 / 255, abs=1e-6)
    assert rad.pixels[10, 10] == pytest.approx(10 / 255, abs=1e-6)


def test_jpeg_polarity_and_exif_orientation(tmp_path):
    arr = bone_square(shape=(32, 48), bone=230, tissue=40).astype(np.uint8)
    Image.fromarray(arr).save(tmp_path / "a.jpg", quality=95)
    rad = read_image(tmp_path / "a.jpg")
    assert rad.bit_depth == 8
    np.testing.assert_allclose(rad.pixels, arr / 255.0, atol=12 / 255)
    # Stored upside down with EXIF Orientation=3 (rotate 180): displayed, the square is top-left.
    exif = Image.Exif()
    exif[0x0112] = 3
    Image.fromarray(arr[::-1, ::-1].copy()).save(tmp_path / "b.jpg", quality=95, exif=exif)
    rad = read_image(tmp_path / "b.jpg")
    assert rad.pixels.shape == (32, 48)
    assert rad.pixels[:4, :5].mean() > 0.8 and rad.pixels[-4:, -5:].mean() < 0.3


def test_tiff_16bit_spacing_bits_and_min_is_white(tmp_path):
    arr = bone_square(bone=50000, tissue=5000).astype(np.uint16)
    tifffile.imwrite(tmp_path / "a.tif", arr, resolution=(50, 50), resolutionunit="CENTIMETER")
    rad = read_image(tmp_path / "a.tif")
    assert rad.bit_depth == 16 and rad.pixel_spacing_mm == pytest.approx(0.2)
    np.testing.assert_allclose(rad.pixels, arr / 65535.0, rtol=1e-6)
    assert_bright_top_left(rad.pixels)
    # WhiteIsZero: bone stored low must come out bright.
    tifffile.imwrite(tmp_path / "b.tif", (65535 - arr).astype(np.uint16), photometric="miniswhite")
    rad = read_image(tmp_path / "b.tif")
    np.testing.assert_allclose(rad.pixels, arr / 65535.0, rtol=1e-6, atol=1e-7)
    # 8-bit TIFF, with 254 dpi in inches
    tifffile.imwrite(tmp_path / "c.tiff", (arr // 257).astype(np.uint8), resolution=(254, 254),
                     resolutionunit="INCH")
    rad = read_image(tmp_path / "c.tiff")
    assert rad.bit_depth == 8 and rad.pixel_spacing_mm == pytest.approx(0.1)
    assert_bright_top_left(rad.pixels)


def test_dicom_monochrome2_window_exact(tmp_path):
    stored = np.array([[1000, 1536, 1537, 2048], [2559, 2560, 4095, 0]])
    make_dicom(tmp_path / "w.dcm", stored, WindowCenter=2048, WindowWidth=1024,
               PixelSpacing=[0.1, 0.12])
    with pytest.warns(UserWarning, match=r"PixelSpacing 0.1 x 0.12 mm is not square; .* off by 20%"):
        rad = read_image(tmp_path / "w.dcm")
    # LINEAR window (PS3.3 C.11.2.1.2.1): y = ((x - (c - .5)) / (w - 1) + .5), clipped to [0, 1]
    expected = np.clip((stored - 2047.5) / 1023 + 0.5, 0, 1)
    np.testing.assert_allclose(rad.pixels, expected, atol=1e-6)
    assert rad.pixel_spacing_mm == pytest.approx(0.1) and rad.bit_depth == 12


def test_dicom_monochrome1_is_inverted_bone_bright_top_left(tmp_path):
    bone_low = 4095 - bone_square(bone=3000, tissue=1500)  # MONOCHROME1: bone stored dark-valued
    make_dicom(tmp_path / "m1.dcm", bone_low, photometric="MONOCHROME1",
               WindowCenter=2048, WindowWidth=4096, ImagerPixelSpacing=[0.15, 0.15])
    rad = read_image(tmp_path / "m1.dcm")
    assert_bright_top_left(rad.pixels)
    assert rad.pixel_spacing_mm == pytest.approx(0.15)
    expected = 1 - np.clip((bone_low - 2047.5) / 4095 + 0.5, 0, 1)
    np.testing.assert_allclose(rad.pixels, expected, atol=1e-6)
    # The same picture stored MONOCHROME2 reads the same.
    make_dicom(tmp_path / "m2.dcm", 4095 - bone_low, WindowCenter=2047, WindowWidth=4096)
    np.testing.assert_allclose(read_image(tmp_path / "m2.dcm").pixels, rad.pixels, atol=1e-3)


def test_dicom_without_voi_uses_stored_bits_and_rescale(tmp_path):
    stored = bone_square(bone=900, tissue=100)
    make_dicom(tmp_path / "raw.dcm", stored, bits=10, preamble=False)
    assert sniff_format(tmp_path / "raw.dcm") == "dicom"
    rad = read_image(tmp_path / "raw.dcm")
    np.testing.assert_allclose(rad.pixels, stored / 1023.0, atol=1e-6)
    assert rad.pixel_spacing_mm is None
    # Signed data, rescale slope 2 intercept -1000: range [-2048*2-1000, 2047*2-1000]
    signed = np.array([[-2048, 0], [2047, 100]])
    make_dicom(tmp_path / "s.dcm", signed, signed=True, RescaleSlope=2, RescaleIntercept=-1000)
    rad = read_image(tmp_path / "s.dcm")
    lo, hi = -2048 * 2 - 1000, 2047 * 2 - 1000
    np.testing.assert_allclose(rad.pixels, (2 * signed - 1000 - lo) / (hi - lo), atol=1e-6)


def test_dicom_rescale_then_window(tmp_path):
    stored = np.array([[0, 500, 1000, 4095]])
    make_dicom(tmp_path / "r.dcm", stored, RescaleSlope=2, RescaleIntercept=-1000,
               WindowCenter=0, WindowWidth=2000)
    rad = read_image(tmp_path / "r.dcm")
    # window output spans the rescaled stored range; normalised it is the window ramp
    expected = np.clip((2 * stored - 1000 + 0.5) / 1999 + 0.5, 0, 1)
    np.testing.assert_allclose(rad.pixels, expected, atol=1e-6)


def test_dicom_voi_lut_sequence_preferred_over_window(tmp_path):
    item = Dataset()
    item.add_new(0x00283002, "US", [256, 0, 16])             # LUTDescriptor: 256 entries, 16 bit
    lut = (np.arange(256) ** 2).astype(np.uint16)            # a non-linear (gamma-like) LUT
    item.add_new(0x00283006, "US", [int(v) for v in lut])    # LUTData
    stored = np.array([[0, 10, 100], [200, 255, 300]])
    make_dicom(tmp_path / "lut.dcm", stored, bits=12, VOILUTSequence=[item],
               WindowCenter=100, WindowWidth=10)
    rad = read_image(tmp_path / "lut.dcm")
    expected = lut[np.clip(stored, 0, 255)] / 65535.0
    np.testing.assert_allclose(rad.pixels, expected, atol=1e-6)


def test_bad_files_raise_bench_error_naming_file(tmp_path):
    good = tmp_path / "good.png"
    write_png16(good, np.random.default_rng(np.random.SeedSequence([1])).random((64, 64)))
    truncated = tmp_path / "truncated.png"
    truncated.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    text = tmp_path / "notes.png"
    text.write_text("this is not an image")
    for bad in (truncated, text, tmp_path / "missing.png"):
        with pytest.raises(BenchError, match=bad.name):
            read_image(bad)
    # DICOM without pixel data, and a multi-frame DICOM
    make_dicom(tmp_path / "nopix.dcm", np.zeros((2, 2)))
    ds = pydicom.dcmread(tmp_path / "nopix.dcm")
    del ds.PixelData
    ds.save_as(tmp_path / "nopix.dcm")
    with pytest.raises(BenchError, match="no pixel data"):
        read_image(tmp_path / "nopix.dcm")
    make_dicom(tmp_path / "multi.dcm", np.zeros((4, 3)), NumberOfFrames=2)
    with pytest.raises(BenchError, match="frames"):
        read_image(tmp_path / "multi.dcm")


def test_dicom_rgb_secondary_capture_is_averaged(tmp_path):
    rgb = np.zeros((6, 8, 3), np.uint8)
    rgb[:3, :4] = (250, 200, 150)
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.7"
    ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SOPClassUID, ds.SOPInstanceUID = "1.2.840.10008.5.1.4.1.1.7", ds.file_meta.MediaStorageSOPInstanceUID
    ds.Rows, ds.Columns, ds.SamplesPerPixel, ds.PhotometricInterpretation = 6, 8, 3, "RGB"
    ds.PlanarConfiguration, ds.BitsAllocated, ds.BitsStored, ds.HighBit = 0, 8, 8, 7
    ds.PixelRepresentation = 0
    ds.PixelData = rgb.tobytes()
    ds.save_as(tmp_path / "sc.dcm", enforce_file_format=True)
    rad = read_image(tmp_path / "sc.dcm")
    np.testing.assert_allclose(rad.pixels, rgb.mean(axis=-1) / 255.0, atol=1e-6)


def test_dicom_negative_slope_with_window_is_the_window_ramp(tmp_path):
    # Rescale slope -1, intercept 4095: modality output 4095 - stored, then the window (c 1000, w 500)
    stored = np.array([[0, 3000, 3200, 3300], [3100, 2900, 4095, 3346]])
    make_dicom(tmp_path / "neg.dcm", stored, RescaleSlope=-1, RescaleIntercept=4095,
               WindowCenter=1000, WindowWidth=500)
    rad = read_image(tmp_path / "neg.dcm")
    expected = np.clip((4095 - stored - 999.5) / 499 + 0.5, 0, 1)
    assert expected.max() == 1 and 0 < expected[0, 1] < 1            # not a constant picture
    np.testing.assert_allclose(rad.pixels, expected, atol=1e-6)


def _voi_lut_item(entries: int, first: int, bits: int, data: np.ndarray) -> Dataset:
    item = Dataset()
    item.add_new(0x00283002, "US", [entries, first, bits])      # LUTDescriptor
    item.add_new(0x00283006, "US", [int(v) for v in data])     # LUTData
    return item


@pytest.mark.parametrize("bits", [8, 16])
def test_dicom_voi_lut_with_more_than_256_entries(tmp_path, bits):
    # 4096 entries starting at input 100: inputs below map to the first entry, past the end to the last
    first, top = 100, 2 ** bits - 1
    lut = np.round(np.linspace(0, 1, 4096) ** 0.5 * top).astype(np.int64)
    stored = np.array([[0, 99, 100, 101, 600], [1500, 3000, 4095, 4196, 5000]])
    make_dicom(tmp_path / "lut.dcm", stored, bits=16, VOILUTSequence=[_voi_lut_item(4096, first, bits, lut)])
    rad = read_image(tmp_path / "lut.dcm")
    expected = lut[np.clip(stored - first, 0, 4095)] / top
    np.testing.assert_allclose(rad.pixels, expected, atol=1e-6)
    assert rad.pixels[0, 0] == 0 and rad.pixels[1, 3] == rad.pixels[1, 4] == pytest.approx(lut[-1] / top)


def test_dicom_voi_lut_shorter_than_its_descriptor_is_refused(tmp_path):
    make_dicom(tmp_path / "short.dcm", np.zeros((2, 2)),
               VOILUTSequence=[_voi_lut_item(4096, 0, 8, np.arange(10))])
    with pytest.raises(BenchError, match=r"short.dcm.*VOI LUT has 10 entries but its descriptor says 4096"):
        read_image(tmp_path / "short.dcm")


def test_integer_rgb_tiff_is_scaled_by_its_dtype_like_png(tmp_path):
    rgb = np.zeros((12, 16, 3), np.uint8)
    rgb[...] = (20, 40, 60)                      # narrow range: must not be stretched to 0..1
    rgb[:4, :5] = (200, 180, 160)
    tifffile.imwrite(tmp_path / "rgb.tif", rgb, photometric="rgb")
    Image.fromarray(rgb).save(tmp_path / "rgb.png")
    tif, png = read_image(tmp_path / "rgb.tif"), read_image(tmp_path / "rgb.png")
    np.testing.assert_allclose(tif.pixels, rgb.mean(axis=-1) / 255.0, atol=1e-6)
    np.testing.assert_allclose(tif.pixels, png.pixels, atol=1e-6)
    assert tif.bit_depth == 8


def test_palette_tiff_applies_its_colour_map(tmp_path):
    index = bone_square(bone=3, tissue=250).astype(np.uint8)
    cmap = np.zeros((3, 256), np.uint16)
    cmap[:] = (255 - np.arange(256)) * 257                     # an inverted gray palette
    tifffile.imwrite(tmp_path / "pal.tif", index, photometric="palette", colormap=cmap)
    rad = read_image(tmp_path / "pal.tif")
    np.testing.assert_allclose(rad.pixels, (255 - index) / 255.0, atol=1e-6)
    assert_bright_top_left(rad.pixels)


@pytest.mark.parametrize("mode", ["I;16", "L", "RGB", "P"])
def test_lzw_tiff_written_by_pillow_is_read_without_imagecodecs(tmp_path, mode):
    arr16 = bone_square(bone=50000, tissue=5000).astype(np.uint16)
    arr8 = (arr16 // 257).astype(np.uint8)
    if mode == "I;16":
        im, expected = Image.fromarray(arr16), arr16 / 65535.0
    elif mode == "RGB":
        im, expected = Image.fromarray(np.stack([arr8] * 3, -1)), arr8 / 255.0
    else:
        im, expected = Image.fromarray(arr8), arr8 / 255.0
        if mode == "P":
            im = im.convert("P")
            expected = arr8 * 256.0 / 65535                   # Pillow writes 8-bit colours as v * 256
    im.save(tmp_path / "lzw.tif", compression="tiff_lzw")
    with tifffile.TiffFile(tmp_path / "lzw.tif") as tif:
        assert tif.pages[0].compression == 5                   # LZW indeed
    rad = read_image(tmp_path / "lzw.tif")
    np.testing.assert_allclose(rad.pixels, expected, atol=1e-6)
    assert_bright_top_left(rad.pixels)


def test_lzw_min_is_white_tiff_keeps_bone_bright(tmp_path):
    arr8 = bone_square(bone=200, tissue=50).astype(np.uint8)
    for name, comp in (("raw.tif", None), ("lzw.tif", "tiff_lzw")):   # Pillow stores 255 - arr8, WhiteIsZero
        Image.fromarray(arr8).save(tmp_path / name, compression=comp, tiffinfo={262: 0})
        with tifffile.TiffFile(tmp_path / name) as tif:
            assert tif.pages[0].photometric == 0 and tif.pages[0].compression == (5 if comp else 1)
        np.testing.assert_allclose(read_image(tmp_path / name).pixels, arr8 / 255.0, atol=1e-6)


def test_unknown_file_message_fits_any_caller(tmp_path):
    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(BenchError) as err:
        read_image(tmp_path / "notes.txt")
    assert "notes.txt" in str(err.value) and "CSV" not in str(err.value)


def test_looks_12_bit_flags_16_bit_files_below_4096(tmp_path):
    from bench.data.imageio import looks_12_bit

    Image.fromarray(bone_square(bone=4095, tissue=100).astype(np.uint16)).save(tmp_path / "a.png")
    Image.fromarray(bone_square(bone=4096, tissue=100).astype(np.uint16)).save(tmp_path / "b.png")
    make_dicom(tmp_path / "c.dcm", bone_square(bone=4000, tissue=100), bits=16)
    assert looks_12_bit(read_image(tmp_path / "a.png"))
    assert not looks_12_bit(read_image(tmp_path / "b.png")) and not looks_12_bit(read_image(tmp_path / "c.dcm"))


def test_multi_page_tiff_is_refused_like_multi_frame_dicom(tmp_path):
    tifffile.imwrite(tmp_path / "stack.tif", np.stack([bone_square(), bone_square()]).astype(np.uint16))
    with pytest.raises(BenchError, match=r"stack\.tif has 2 pages \(images\); expected a single radiograph"):
        read_image(tmp_path / "stack.tif")


@pytest.mark.parametrize("pillow", [False, True])
def test_tiff_reduced_resolution_pages_are_skipped_for_the_full_image(tmp_path, monkeypatch, pillow):
    full = bone_square().astype(np.uint16)
    with tifffile.TiffWriter(tmp_path / "thumb.tif") as tif:            # thumbnail first, then the image
        tif.write(np.full((3, 4), 60000, np.uint16), subfiletype=1)
        tif.write(full, subifds=1)
        tif.write(full[::2, ::2], subfiletype=1)                         # its pyramid level (a SubIFD)
        tif.write(full[::4, ::4], subfiletype=1)                         # and another main-chain thumbnail
    if pillow:                                                           # as when tifffile cannot decode
        monkeypatch.setattr(tifffile.TiffPage, "asarray", lambda *a, **k: 1 / 0)
    rad = read_image(tmp_path / "thumb.tif")
    np.testing.assert_allclose(rad.pixels, full / 65535.0, atol=1e-6)
