"""Build of opgraph's compiled kernels (C++ via Cython); the metadata lives in pyproject.toml.

Used by `pip install .` and `pip install -e .` (setuptools' editable mode builds the
extensions and copies them next to their sources, i.e. into runtime/kernels/, which the
package-dir mapping exposes as opgraph.runtime.kernels).
"""

from Cython.Build import cythonize
from setuptools import Extension, setup

CXX_FLAGS = ["-O3", "-std=c++17"]

extensions = [
    Extension(
        "opgraph.runtime.kernels.hashing",
        sources=["runtime/kernels/hashing.pyx"],
        depends=["runtime/kernels/hash_kernels.hpp"],
        include_dirs=["runtime/kernels"],
        language="c++",
        extra_compile_args=CXX_FLAGS,
    ),
    # radix sort, partitioned hash join, gather/filter, range partition (op_kernels.hpp)
    Extension(
        "opgraph.runtime.kernels.opkernels",
        sources=["runtime/kernels/opkernels.pyx"],
        depends=["runtime/kernels/op_kernels.hpp", "runtime/kernels/kernel_common.hpp", "runtime/kernels/kernel_buffers.pxd"],
        include_dirs=["runtime/kernels"],
        language="c++",
        extra_compile_args=[*CXX_FLAGS, "-pthread"],
        extra_link_args=["-pthread"],
    ),
    # fused filter-and-compact, dictionary isin lookup (filter_kernels.hpp)
    Extension(
        "opgraph.runtime.kernels.filtering",
        sources=["runtime/kernels/filtering.pyx"],
        depends=["runtime/kernels/filter_kernels.hpp", "runtime/kernels/kernel_common.hpp", "runtime/kernels/kernel_buffers.pxd"],
        include_dirs=["runtime/kernels"],
        language="c++",
        extra_compile_args=[*CXX_FLAGS, "-pthread"],
        extra_link_args=["-pthread"],
    ),
    # halo plan/packing and rolling/diff/shift window kernels (window_kernels.hpp)
    Extension(
        "opgraph.runtime.kernels.windowing",
        sources=["runtime/kernels/windowing.pyx"],
        depends=["runtime/kernels/window_kernels.hpp", "runtime/kernels/kernel_buffers.pxd"],
        include_dirs=["runtime/kernels"],
        language="c++",
        extra_compile_args=CXX_FLAGS,
    ),
    # range partitioning by splitters for the sample sort (range_kernels.hpp; scatter and
    # counting sort shared with hash_kernels.hpp)
    Extension(
        "opgraph.runtime.kernels.ranging",
        sources=["runtime/kernels/ranging.pyx"],
        depends=[
            "runtime/kernels/range_kernels.hpp",
            "runtime/kernels/hash_kernels.hpp",
            "runtime/kernels/kernel_common.hpp",
            "runtime/kernels/kernel_buffers.pxd",
        ],
        include_dirs=["runtime/kernels"],
        language="c++",
        extra_compile_args=[*CXX_FLAGS, "-pthread"],
        extra_link_args=["-pthread"],
    ),
    # hash group-by aggregation (group_kernels.hpp)
    Extension(
        "opgraph.runtime.kernels.grouping",
        sources=["runtime/kernels/grouping.pyx"],
        depends=["runtime/kernels/group_kernels.hpp", "runtime/kernels/kernel_common.hpp", "runtime/kernels/kernel_buffers.pxd"],
        include_dirs=["runtime/kernels"],
        language="c++",
        extra_compile_args=[*CXX_FLAGS, "-pthread"],
        extra_link_args=["-pthread"],
    ),
]

setup(
    ext_modules=cythonize(
        extensions,
        language_level=3,
        include_path=["runtime/kernels"],  # kernel_buffers.pxd (cimported by the .pyx files)
        compiler_directives={
            "boundscheck": False,
            "wraparound": False,
            "initializedcheck": False,
        },
    ),
)
