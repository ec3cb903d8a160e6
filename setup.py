"""VisionCLIP-CN: a retina language-image model built on Chinese-CLIP (cn_clip).

cn_clip 1.6.0 pins lmdb==1.3.0, which has no wheel for current Pythons, so it is
installed with ``pip install --no-deps cn_clip==1.6.0`` (run_scripts/setup.sh does this)
and its real needs are declared here instead.
"""
from setuptools import find_namespace_packages, setup

PROGRAMS = {  # installed name -> folder in this repository
    "vclip_data_prep": "data_prep",
    "vclip_eval": "eval",
    "vclip_export": "export",
    "vclip_train": "train",
}

setup(
    name="visionclip-cn",
    version="0.1.0",
    description="VisionCLIP: a Chinese retina language-image foundation model on Chinese-CLIP",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    license="MIT",
    python_requires=">=3.9",
    packages=find_namespace_packages(include=["cn_clip_ext", "cn_clip_ext.*"]) + list(PROGRAMS),
    package_dir=dict(PROGRAMS),
    package_data={"cn_clip_ext": ["model/model_configs/*.json", "evaluation/resources/prompts/*.yaml",
                                  "evaluation/resources/prompts/en/*.yaml", "evaluation/resources/datasets.yaml"]},
    include_package_data=True,
    install_requires=[
        "torch>=1.13",
        "torchvision",
        "lmdb>=1.4",
        "timm",
        "numpy",
        "pillow",
        "pyspng",  # vclip-build-lmdb: faster 8-bit PNG decoding (libspng)
        "opencv-python-headless",  # fundus transforms: the affine warp, about 3x PIL's
        "transformers",
        "tqdm",
        "six",
        "pyyaml",
        "matplotlib",
        "tensorboard",
        "safetensors",
        "onnx",
        "onnxruntime",
        "scikit-learn",
        "xlrd",  # MESSIDOR's Annotation_Base*.xls
        "openpyxl",  # .xlsx label tables (REFUGE, converted MESSIDOR)
        "imagehash",  # vclip-audit: perceptual hashes
        "faiss-cpu",  # vclip-audit: nearest-neighbour search
    ],
    extras_require={
        "open_clip": ["open_clip_torch==3.3.0"],  # the open_clip family (CLIP, BiomedCLIP baselines)
        "test": ["pytest", "pandas", "scikit-image", "xlwt", "open_clip_torch==3.3.0"],
    },
    entry_points={
        "console_scripts": [
            "vclip-synth = vclip_data_prep.synth:main",
            "vclip-build-lmdb = vclip_data_prep.build_lmdb:main",
            "vclip-train = vclip_train.train:main",
            "vclip-eval = vclip_eval.evaluate:main",
            "vclip-audit = vclip_eval.audit:main",
            "vclip-export = vclip_export.export:main",
            "vclip-embed = vclip_export.embed:main",
        ],
    },
)
