#!/usr/bin/env bash
# On the GPU machine, from the repo root (see notes/device_run.md): install the carried diffusers wheel, unpack the
# carried Fashion-MNIST, then train `fashion-t2i` to its plateau (and, with LATENT=1, the latent testbed's VAE then
# its latent UNet, as a second process) within time limits; copy the results to $OUT as at most 8 flat files.
# Overrides (a CPU dry run uses them): DEVICE, PYTHON, WORK, T2I_ARGS, T2I_LIMIT_S, LATENT, VAE_ARGS, VAE_LIMIT_S,
# LATENT_ARGS, LATENT_LIMIT_S, SPEED_STEPS (0: no speed probe), SPEED_THREADS.
set -uo pipefail
main() {  # parsed whole before it runs: editing this file during a run cannot change the run
: "${OUT:?set OUT to the folder whose files come back}"
DEVICE=${DEVICE:-cuda}
PY=${PYTHON:-python3}
WORK=${WORK:-/tmp/sd_device}
T2I_ARGS=${T2I_ARGS:---steps 30000 --batch-size 256 --lr 1e-3 --eval-every 1000 --eval-samples 2000 --plateau 0.03 --checkpoint-every 1000 --time-limit 4.4 --threads 4}
T2I_LIMIT_S=${T2I_LIMIT_S:-330}
LATENT=${LATENT:-1}
VAE_ARGS=${VAE_ARGS:---steps 30000 --batch-size 256 --time-limit 1.8 --threads 4}
VAE_LIMIT_S=${VAE_LIMIT_S:-170}
LATENT_ARGS=${LATENT_ARGS:---steps 30000 --batch-size 256 --lr 1e-3 --widths 48,96 --eval-every 1000 --eval-samples 2000 --plateau 0.03 --checkpoint-every 1000 --time-limit 2.5 --threads 4}
LATENT_LIMIT_S=${LATENT_LIMIT_S:-210}
SPEED_STEPS=${SPEED_STEPS:-150}
SPEED_THREADS=${SPEED_THREADS:-4}
mkdir -p "$WORK/site" "$WORK/fashion-mnist" "$WORK/t2i" "$WORK/latent-unet" "$OUT"
started=$(date +%s)
log() { echo "[device $(( $(date +%s) - started ))s] $*"; }

"$PY" -m pip install -q --no-index --no-deps --target "$WORK/site" .device/*.whl || { log "diffusers wheel failed"; exit 3; }
export PYTHONPATH="$WORK/site:$PWD/src"
for f in .device/*.xz; do xz -dc "$f" | gzip -1 > "$WORK/fashion-mnist/$(basename "$f" .xz).gz"; done
export SAFEDENOISER_FASHION_MNIST="$WORK/fashion-mnist"
for d in "$WORK/t2i" "$WORK/latent-unet"; do cp .device/captions.safetensors "$d/"; done
"$PY" - <<'PYEOF' > "$WORK/env.json" 2>&1
import json, platform, torch, diffusers
print(json.dumps({"python": platform.python_version(), "torch": torch.__version__, "diffusers": diffusers.__version__,
                  "device": torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu"}))
PYEOF
log "setup done: $(cat "$WORK/env.json")"

# bf16 autocast against fp32: the same short run twice, wall time per step (nothing else runs meanwhile)
echo '{}' > "$WORK/speed.json"; : > "$WORK/speed.log"
[ "$SPEED_STEPS" -gt 0 ] && "$PY" - "$DEVICE" "$SPEED_STEPS" "$WORK/speed" "$SPEED_THREADS" <<'PYEOF' > "$WORK/speed.json" 2> "$WORK/speed.log"
import json, shutil, sys
from pathlib import Path
from safedenoiser.t2i.train import CAPTION_CACHE, TextTrainConfig, train_text
device, steps, root, threads = sys.argv[1], int(sys.argv[2]), Path(sys.argv[3]), int(sys.argv[4])
result = {}
for precision in ("fp32", "bf16", "fp32"):
    out = root / precision
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    shutil.copy(".device/" + CAPTION_CACHE, out / CAPTION_CACHE)
    cfg = TextTrainConfig(out=str(out), steps=steps, batch_size=256, eval_every=0, device=device, precision=precision,
                          checkpoint_every=10**6, threads=threads)
    info = json.loads((train_text(cfg, progress=False) / "training.json").read_text())
    result[precision] = {"steps": steps, "batch_size": 256, "ms_per_step": round(1000 * info["wall_time_s"] / steps, 2)}
print(json.dumps(result))
PYEOF
log "speed (second fp32 run kept: the first one warms up): $(cat "$WORK/speed.json")"

timeout "$T2I_LIMIT_S" "$PY" -m safedenoiser.cli train --text --out "$WORK/t2i" --device "$DEVICE" $T2I_ARGS \
    > "$WORK/t2i.log" 2>&1 &
pixel=$!
if [ "$LATENT" = 1 ]; then
    (
        timeout "$VAE_LIMIT_S" "$PY" -m safedenoiser.cli latent vae --out "$WORK/vae" --device "$DEVICE" $VAE_ARGS \
            && timeout "$LATENT_LIMIT_S" "$PY" -m safedenoiser.cli train --text --vae "$WORK/vae/vae" \
                --out "$WORK/latent-unet" --device "$DEVICE" $LATENT_ARGS
    ) > "$WORK/latent.log" 2>&1 &
    latent=$!
fi
wait $pixel; log "pixel training exit $?"
[ "$LATENT" = 1 ] && { wait $latent; log "latent chain exit $?"; }

# at most 8 flat files
tar -C "$WORK/t2i" -cf "$OUT/t2i_pipeline.tar" pipeline history.json 2>/dev/null
cp "$WORK/t2i/samples.png" "$OUT/t2i_samples.png" 2>/dev/null
if [ "$LATENT" = 1 ]; then
    # the pipeline holds the VAE's weights; the VAE folder travels alone only when no pipeline came out (16 MiB a file)
    vae_part=vae/vae; [ -f "$WORK/latent-unet/pipeline/model_index.json" ] && vae_part=vae/vae/training.json
    tar -C "$WORK" -cf "$OUT/latent_pipeline.tar" latent-unet/pipeline latent-unet/history.json "$vae_part" \
        vae/history.json 2>/dev/null
    cp "$WORK/latent-unet/samples.png" "$OUT/latent_samples.png" 2>/dev/null
    cp "$WORK/vae/reconstructions.png" "$OUT/vae_reconstructions.png" 2>/dev/null
fi
tail -c 200000 "$WORK/t2i.log" > "$OUT/t2i.log"
{ cat "$WORK/env.json" "$WORK/speed.json"; tail -c 20000 "$WORK/speed.log"; [ "$LATENT" = 1 ] && tail -c 150000 "$WORK/latent.log"; } > "$OUT/run.log" 2>&1
log "done"; ls -la "$OUT"
}
main "$@"
exit $?
