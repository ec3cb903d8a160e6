"""Build shim: the one thing ``pyproject.toml`` cannot say concisely.

All metadata (name, version, Python and dependency floors, extras, console scripts, package data) is in
``pyproject.toml``. The programs live in folders named for what they do (``data_prep/``, ``eval/``,
``export/``, ``train/``) but install as ``vclip_*`` packages, and ``[tool.setuptools]`` can either find
packages or map listed ones to folders, not both: here the library's packages are found and the four
program folders are mapped onto their installed names.
"""
from setuptools import find_namespace_packages, setup

PROGRAMS = {  # installed name -> folder in this repository
    "vclip_data_prep": "data_prep",
    "vclip_eval": "eval",
    "vclip_export": "export",
    "vclip_train": "train",
}

setup(
    packages=find_namespace_packages(include=["cn_clip_ext", "cn_clip_ext.*"]) + list(PROGRAMS),
    package_dir=dict(PROGRAMS),
)
