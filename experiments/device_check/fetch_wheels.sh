#!/usr/bin/env bash
# Fetches into .whl/ (repo root, gitignored) the wheels that the H200 machines' image lacks,
# for CPython 3.12 on manylinux x86_64, so that the device check can install them there
# without a network. Usage, from anywhere (needs PyPI):
#
#     bash experiments/device_check/fetch_wheels.sh
#
# then carry .whl to the GPU machine and run the line this script prints last.
#
# What the image already has (torch 2.11.0 + triton 3.6.0, jax/jaxlib 0.11.2 with the CUDA 13
# plugin, flax, optax, orbax-checkpoint, equinox, einops, safetensors, numpy, scipy,
# matplotlib, tensorboard, pytest, pytest-timeout, ...; the list in the workplace's device
# notes, read 2026-11-17) is not fetched: every wheel below is one it lacks, and every
# Requires-Dist of these wheels (extras and other platforms' markers aside) is either below or
# in the image. Versions are pinned, one per package: pip refuses an install with two.
#
# Groups:
# * PROJECT: setup.py's install_requires the image lacks (grain needs portpicker).
# * TESTS: setup.py's dev extra the image lacks: tensorboardX (tests/test_tensorboard.py)
#   and the notebook runner with its dependency closure (tests/test_notebook.py). The
#   device check's background suite skips test_notebook.py; drop NOTEBOOK from WANT to save
#   ~14 MiB if nothing else runs it there.
# * ANCHORS: the KDA anchors of experiments/device_check/anchors.py. fla-core 0.6.0 holds
#   fla.ops (chunk_kda); it needs torch >= 2.7 and triton >= 3.3 (the image: 2.11, 3.6).
#   The flash-linear-attention wheel (fla.layers / fla.models) is left out on purpose: the
#   anchor needs only fla.ops, and with it installed `import fla` also imports the layers,
#   hence transformers, at every import. jax-linear-attention 0.1.0 pins jax 0.11.2 (the
#   image's) and needs equinox, optax, numpy, safetensors (all in the image).
set -euo pipefail
cd "$(dirname "$0")/../.."

PROJECT=(grain==0.2.18 array-record==0.8.6 ml-collections==1.1.0 portpicker==1.6.0)
TENSORBOARD=(tensorboardX==2.6.5)
NOTEBOOK=(nbformat==5.11.1 nbclient==0.11.0 ipykernel==7.4.0
          fastjsonschema==2.22.3 jsonschema==4.26.0 jsonschema-specifications==2025.9.1
          referencing==0.37.0 rpds-py==2026.9.1
          jupyter-client==8.10.0 jupyter-core==5.9.1 platformdirs==4.14.9 traitlets==5.16.1
          pyzmq==27.3.0 tornado==6.6.1 comm==0.2.3 debugpy==1.8.22 nest-asyncio2==1.7.4
          matplotlib-inline==0.2.2
          ipython==9.18.1 ipython-pygments-lexers==1.1.1 jedi==0.20.1 parso==0.8.7
          prompt-toolkit==3.0.53 wcwidth==0.9.4 pexpect==4.9.0 ptyprocess==0.7.0
          stack-data==0.6.3 executing==2.3.0 asttokens==3.0.2 pure-eval==0.2.4)
ANCHORS=(fla-core==0.6.0 jax-linear-attention==0.1.0)
WANT=("${PROJECT[@]}" "${TENSORBOARD[@]}" "${NOTEBOOK[@]}" "${ANCHORS[@]}")

if [ -n "${PYTHON:-}" ]; then PY=$PYTHON
elif [ -x .venv/bin/python ]; then PY=.venv/bin/python
else PY=python3; fi

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
"$PY" -m pip download -q --disable-pip-version-check --no-deps --only-binary=:all: \
  --python-version 3.12 --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 \
  --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 --platform manylinux1_x86_64 \
  -d "$tmp" "${WANT[@]}" 2>&1 | grep -v "is ignored: it is neither a file nor a directory" || true

# pip exits 0 only if it found every wheel; check the count ourselves after the grep above.
n_got=$(ls "$tmp"/*.whl 2>/dev/null | wc -l)
if [ "$n_got" -ne "${#WANT[@]}" ]; then
  echo "fetch_wheels.sh: got $n_got wheels for ${#WANT[@]} pins; see pip's messages above" >&2
  exit 1
fi

# Replace the wheels only once all were fetched: stale versions left beside new ones would
# make the install on the GPU machine fail.
mkdir -p .whl
rm -f .whl/*.whl
mv "$tmp"/*.whl .whl/

echo "fetch_wheels.sh: ${#WANT[@]} wheels in .whl/ (KiB, file):"
( cd .whl && du -k -- *.whl | sort -k2 )
total_kib=$(du -kc .whl/*.whl | tail -1 | cut -f1)
echo "total: $(( (total_kib + 1023) / 1024 )) MiB ($total_kib KiB)"
echo "on the GPU machine, from the repo root:"
echo "python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site"
