"""Synthetic-but-real-derived MRI data: the generator behind ``sample_data/``.

Subjects are made from the MNI ICBM152 2009a nonlinear symmetric template (T1 image and grey /
white matter probability maps) that ships inside the nilearn wheel: a smooth random deformation and
a rigid pose per subject, tissue-mixture contrasts for T1 / T1ce / T2 / FLAIR modulated by the real
T1's texture, a multiplicative bias field per sequence and an optional synthetic tumour with
BraTS labels.  nilearn is needed only to *regenerate* data (``pip install medinvert[data]``).

    medinvert.data.synth   -- template loading, deformation, tumour, contrasts (pure numpy / scipy)
    medinvert.data.sample  -- writes the bundled ``sample_data/`` tree (NIfTI + a DICOM series)
"""

from __future__ import annotations

__all__: list[str] = []
