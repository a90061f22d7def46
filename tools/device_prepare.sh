#!/usr/bin/env bash
# Build .device/ here (the folder a GPU run carries; see notes/device_run.md): the diffusers wheel matching the
# installed version (for the machine's Python 3.12), Fashion-MNIST as .xz, and the MiniLM caption-embedding cache
# of `train --text` (the GPU machine has no text-encoder package). Idempotent; adds /.device/ to .git/info/exclude.
set -euo pipefail
cd "$(git rev-parse --show-toplevel)"
PY=${PYTHON:-python}
mkdir -p .device
grep -qxF '/.device/' .git/info/exclude 2>/dev/null || echo '/.device/' >> .git/info/exclude
version=$("$PY" -c 'import diffusers; print(diffusers.__version__)')
if ! ls .device/diffusers-"$version"-*.whl >/dev/null 2>&1; then
    "$PY" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 -d .device "diffusers==$version"
fi
src=${SAFEDENOISER_FASHION_MNIST:-/usr/share/datasets/fashion-mnist}
for name in train-images-idx3-ubyte train-labels-idx1-ubyte t10k-images-idx3-ubyte t10k-labels-idx1-ubyte; do
    [ -s ".device/$name.xz" ] || { gzip -dc "$src/$name.gz" | xz -9e -T1 > ".device/$name.xz.part" && mv ".device/$name.xz.part" ".device/$name.xz"; }
done
"$PY" - <<'PYEOF'
from safedenoiser.t2i.train import CAPTION_CACHE, all_captions
from safedenoiser.t2i.text import cached_caption_embeddings

table = cached_caption_embeddings(all_captions()[0], ".device/" + CAPTION_CACHE)
print(f"caption cache: {tuple(table.shape)} -> .device/{CAPTION_CACHE}")
PYEOF
du -ch .device/* | tail -n 20
