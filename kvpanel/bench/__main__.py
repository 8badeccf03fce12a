"""``python -m kvpanel.bench long-doc-qa [flags]`` (the same as ``kvpanel bench long-doc-qa``)."""

import sys

from kvpanel.bench.cli import bench_main

sys.exit(bench_main(sys.argv[1:]))
