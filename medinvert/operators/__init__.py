"""Forward operators ``A``, their exact adjoints ``A^H``, data consistency, and `Observation`.

Every operator acts on images shaped ``(..., H, W)`` -- in-plane axes are the *last two*
dimensions, anything before them is batch.  Volumes are ``(X, Y, Z)`` with in-plane axes 0 and 1, so
callers hand operators the slice stack ``volume_to_slices(vol)`` (``(Z, X, Y)``) and map results back
with `slices_to_volume`.

==================  ======  ======================================  ==============================
operator            kind    A x                                     data consistency
==================  ======  ======================================  ==============================
`KspaceOperator`    kspace  M * F x (centred orthonormal 2-D FFT)   closed form, k-space replacement
`InpaintOperator`   mask    M * x                                   closed form, pixel replacement
`IdentityOperator`  noise   x                                       weighted average
`BlurOperator`      blur    k * x (zero-padded "same" convolution)  conjugate gradient
==================  ======  ======================================  ==============================

``DESCRIPTOR_LENGTH`` is the length of every conditioning descriptor (slots documented in
`medinvert.operators.descriptor`); the all-zero vector means "no condition".
"""

from medinvert.operators.base import LinearOperator
from medinvert.operators.blur import BlurOperator
from medinvert.operators.descriptor import DESCRIPTOR_LENGTH, DESCRIPTOR_SLOTS, KINDS, make_descriptor, null_descriptor
from medinvert.operators.fft import fft2c, ifft2c
from medinvert.operators.identity import IdentityOperator
from medinvert.operators.inpaint import InpaintOperator
from medinvert.operators.kernels import gaussian_kernel, motion_kernel
from medinvert.operators.kspace import KspaceOperator
from medinvert.operators.layout import slices_to_volume, volume_to_slices
from medinvert.operators.observation import Observation, observation_paths

__all__ = [
    "DESCRIPTOR_LENGTH",
    "DESCRIPTOR_SLOTS",
    "KINDS",
    "BlurOperator",
    "IdentityOperator",
    "InpaintOperator",
    "KspaceOperator",
    "LinearOperator",
    "Observation",
    "fft2c",
    "gaussian_kernel",
    "ifft2c",
    "make_descriptor",
    "motion_kernel",
    "null_descriptor",
    "observation_paths",
    "slices_to_volume",
    "volume_to_slices",
]
