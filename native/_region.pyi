# The cffi extension built by native/build_region.py; its C API is in native/limiter/region.h.
from typing import Any

ffi: Any
lib: Any
