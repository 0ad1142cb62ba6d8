"""Packaging for moba_jax (distribution name ``moba-jax``).

Install for development and tests with::

    bash install.sh        # a .venv with Python 3.12 and these pins, or: pip install -e ".[dev]"

The pins below are one set verified together on Python 3.12 with jax 0.11.2 on CPU; jax,
flax, optax and orbax-checkpoint are the versions the project's H200 machines run.
"""
from setuptools import find_packages, setup

INSTALL_REQUIRES = [
    "jax==0.11.2",
    "jaxlib==0.11.2",
    "flax==0.12.10",
    "optax==0.2.8",
    "orbax-checkpoint==0.12.8",
    "grain==0.2.18",
    "array-record==0.8.6",
    "ml-collections==1.1.0",
    "absl-py==2.5.1",
    "numpy==2.4.6",
    "scipy==1.17.1",
    "matplotlib==3.11.2",
    "tqdm==4.70.1",
]

TENSORBOARD = [
    # train.tensorboard=True writes RUN_DIR/tb/ through tensorboardX (imported only then).
    "tensorboardX==2.6.5",
]

EXTRAS_REQUIRE = {
    "tensorboard": TENSORBOARD,
    "dev": [
        *TENSORBOARD,
        # tests/test_tensorboard.py reads the events back (and `tensorboard --logdir` views them).
        "tensorboard==2.21.0",
        "pytest==9.2.0",
        "pytest-timeout==2.4.0",
        # Executing notebooks/analysis.ipynb in tests/test_notebook.py.
        "nbformat==5.11.1",
        "nbclient==0.11.0",
        "ipykernel==7.4.0",
    ],
}

setup(
    name="moba-jax",
    version="0.1.0",
    description=(
        "JAX research codebase for efficient attention at scale: MoBA, Kimi Delta "
        "Attention, Pallas kernels, sharded trainers and scaling-law analysis."
    ),
    python_requires=">=3.12",
    packages=find_packages(include=["moba_jax*", "kernels*", "experiments*", "configs*", "analysis*"]),
    install_requires=INSTALL_REQUIRES,
    extras_require=EXTRAS_REQUIRE,
)
