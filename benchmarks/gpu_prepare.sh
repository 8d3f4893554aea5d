#!/usr/bin/env bash
# Run HERE (the development machine) before benchmarks/gpu_session.sh: fills the two ignored
# folders the device tool must carry. .whl: the packages the GPU image lacks (optuna, fvcore
# and their pure-Python needs), built for its Python 3.12; .gpu_data: the Fashion-MNIST
# files. Both are listed in .git/info/exclude so they travel only when carried.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
for p in .whl .gpu_data; do grep -qx "/$p/" .git/info/exclude 2>/dev/null || echo "/$p/" >> .git/info/exclude; done
mkdir -p .whl .gpu_data
cp /usr/share/datasets/fashion-mnist/* .gpu_data/
plat=(--platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64)
for p in optuna==5.0.0 alembic sqlalchemy colorlog mako iopath yacs termcolor timm==1.0.31; do
  $PY -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    "${plat[@]}" -d .whl "$p"
done
$PY -m pip wheel -q --no-deps fvcore==0.1.5.post20221221 -w .whl  # sdist only: build it here
du -sh .whl .gpu_data
