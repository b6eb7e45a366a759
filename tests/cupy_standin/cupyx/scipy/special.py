"""cupyx.scipy.special of the CuPy stand-in."""
import scipy.special

import cupy

erf = cupy._device_function(scipy.special.erf)
