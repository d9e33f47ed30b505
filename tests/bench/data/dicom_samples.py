"""Small DICOM files for the reader's tests (test_imageio, test_dicom_decoding)."""
from __future__ import annotations

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid


def make_dicom(path, stored: np.ndarray, photometric: str = "MONOCHROME2", bits: int = 12,
               signed: bool = False, preamble: bool = True, **attrs) -> None:
    """A minimal uncompressed single-frame grayscale DICOM (DX-like)."""
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.1.1"
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = meta.MediaStorageSOPClassUID
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.Rows, ds.Columns = stored.shape
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = photometric
    ds.BitsAllocated, ds.BitsStored, ds.HighBit = 16, bits, bits - 1
    ds.PixelRepresentation = int(signed)
    for key, value in attrs.items():
        setattr(ds, key, value)
    ds.PixelData = stored.astype(np.int16 if signed else np.uint16).tobytes()
    ds.save_as(path, enforce_file_format=preamble)


def bone_square(shape=(12, 16), bone=3000, tissue=1000) -> np.ndarray:
    """Stored values with a 'bone' square in the top-left corner (rows 0-3, cols 0-4)."""
    arr = np.full(shape, tissue, dtype=np.int64)
    arr[:4, :5] = bone
    return arr
