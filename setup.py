"""Build the compiled hit path (Cython) alongside the pure-Python package."""
import os

from Cython.Build import cythonize
from setuptools import Extension, setup

DEBUG = os.environ.get("FASTDNS_DEBUG", "0") == "1"
# FASTDNS_NO_MMSG=1 builds the hit path as on a platform without recvmmsg/sendmmsg (non-Linux):
# the server then serves UDP one datagram at a time. For trying that path on Linux.
NO_MMSG = os.environ.get("FASTDNS_NO_MMSG", "0") == "1"

extensions = [
    Extension(
        f"fastdns.{name}",
        [f"fastdns/{name}.pyx"],
        define_macros=[("FASTDNS_DEBUG", "1" if DEBUG else "0")]
        + ([("FASTDNS_HAVE_MMSG", "0")] if NO_MMSG else []),
        extra_compile_args=["-O2"] if not DEBUG else ["-O0", "-g"],
    )
    for name in ("_wire", "_lru", "_logenc", "_fastpath")
]

setup(
    ext_modules=cythonize(
        extensions,
        language_level=3,
        compiler_directives={"embedsignature": True},
        annotate=os.environ.get("FASTDNS_ANNOTATE") == "1",
    ),
)
