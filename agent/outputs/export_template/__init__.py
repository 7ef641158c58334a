"""The files of an exported kernel package that are the same for every export.

`kernelwright export` copies these files verbatim into the package it writes (next to its
manifest.json, kernels/ and references/), so they import nothing of kernelwright: only torch,
the standard library and each other (relatively). In kernelwright's own tree only
`_patterns.py` is imported: by the export, to establish which pattern a task's reference is.
"""
