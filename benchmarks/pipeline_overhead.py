"""Time overhead of the safe-denoiser hook on a real-size SD-1.x UNet (random weights; CPU or GPU).

Per denoising step with CFG (batch 2) it times, in one process, the UNet forward and the hook's own work on that
output (noise-level read, x0 conversion, correction against N negation latents of 4x64x64, delta back), and
reports their ratio. Run:  python benchmarks/pipeline_overhead.py --n 3000 --steps 3 [--device cuda]
"""

from __future__ import annotations

import argparse
import json
import platform
import time

import torch


def sd1_unet():
    from diffusers import UNet2DConditionModel

    return UNet2DConditionModel(sample_size=64, in_channels=4, out_channels=4, layers_per_block=2,
                                block_out_channels=(320, 640, 1280, 1280), cross_attention_dim=768, attention_head_dim=8,
                                down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
                                up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3)


class _Pipe:
    """The two attributes the hook reads from a pipeline."""

    def __init__(self, unet, scheduler):
        self.unet, self.scheduler = unet, scheduler


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=3000)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="float32", choices=("float32", "float16"))
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--mode", default="paper", choices=("paper", "reference"))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    from diffusers import DDIMScheduler

    from safedenoiser import NegationSet
    from safedenoiser.pipelines import attach_safe_denoiser

    device, dtype = torch.device(args.device), getattr(torch, args.dtype)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    torch.manual_seed(0)
    unet = sd1_unet().to(device, dtype).eval()
    scheduler = DDIMScheduler(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012, clip_sample=False,
                              set_alpha_to_one=False, steps_offset=1)
    scheduler.set_timesteps(50)
    negation = NegationSet(torch.randn(args.n, 4, 64, 64, dtype=dtype, device=device))
    handle = attach_safe_denoiser(_Pipe(unet, scheduler), negation, args.mode, check=False)
    handle.detach()  # time the hook function directly, on the UNet's own outputs
    x = torch.randn(2, 4, 64, 64, device=device, dtype=dtype)
    text = torch.randn(2, 77, 768, device=device, dtype=dtype)
    unet_s, hook_s = [], []
    with torch.no_grad():
        for step in range(args.steps + 1):  # the first step warms up and is not counted
            t = scheduler.timesteps[step]
            sync()
            start = time.perf_counter()
            out = unet(x, t, encoder_hidden_states=text)
            sync()
            middle = time.perf_counter()
            handle._hook(unet, (x, t), {"encoder_hidden_states": text}, out)
            sync()
            end = time.perf_counter()
            if step:
                unet_s.append(middle - start)
                hook_s.append(end - middle)
    unet_mean, hook_mean = sum(unet_s) / len(unet_s), sum(hook_s) / len(hook_s)
    print(json.dumps({"device": torch.cuda.get_device_name() if device.type == "cuda" else platform.processor() or "cpu",
                      "threads": args.threads, "dtype": args.dtype, "mode": args.mode, "n": args.n, "steps": args.steps,
                      "unet_s_per_step": round(unet_mean, 4), "hook_s_per_step": round(hook_mean, 4),
                      "overhead_ratio": round(hook_mean / unet_mean, 5)}))


if __name__ == "__main__":
    main()
