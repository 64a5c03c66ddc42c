"""The C extension kvfast._speedups (everything else is in pyproject.toml).

``optional=True``: a machine without a compiler or the Python headers still
installs kvfast; kvfast.impl then warns once and uses the Python encoders.
"""

from setuptools import Extension, setup

setup(
    ext_modules=[
        Extension(
            "kvfast._speedups",
            sources=["kvfast/_speedups.c", "kvfast/_copyrows.c"],
            optional=True,
            extra_compile_args=["-Wall", "-Wextra", "-Wno-unused-parameter", "-Wno-missing-field-initializers"],
        )
    ]
)
