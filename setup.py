"""The one part of reach-sync that setuptools' pyproject.toml cannot declare: the C extension.

``consumer/router/_avro_scan.c`` makes the router's decode of an Avro event about four times
cheaper than the generated Python that stands in for it when no C compiler is at hand
(docs/avro.md). It is optional by default, so that ``pip install`` works anywhere;
``REACH_SYNC_REQUIRE_EXTENSIONS=1`` (the container build) makes a failed compile fail the build.
"""

import os

from setuptools import Extension, setup

setup(
    ext_modules=[
        Extension(
            "consumer.router._avro_scan",
            ["consumer/router/_avro_scan.c"],
            optional=os.environ.get("REACH_SYNC_REQUIRE_EXTENSIONS") != "1",
        )
    ]
)
