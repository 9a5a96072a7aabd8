"""Whole-volume inference: every axial slice through the 2D model, stacked back into the 3D volume."""

from __future__ import annotations

from contextlib import nullcontext

import numpy as np
import torch
from torch import nn


def autocast_context(device: torch.device, enabled: bool):
    """Mixed precision on CUDA (bfloat16 where supported); a no-op on the CPU."""
    if not enabled or device.type != "cuda":
        return nullcontext()
    dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.autocast("cuda", dtype=dtype)


@torch.no_grad()
def predict_volume(
    model: nn.Module,
    image: np.ndarray,
    device: torch.device,
    dimensions: int = 2,
    batch_size: int = 32,
    amp: bool = False,
    roi_size: tuple[int, int, int] = (32, 96, 96),
) -> np.ndarray:
    """Label volume (Z, H, W) uint8 for a preprocessed image (Z, H, W).

    2D models see slices in batches of `batch_size`; 3D models run MONAI's sliding-window inference.
    """
    was_training = model.training
    model.eval()
    try:
        if dimensions == 3:
            from monai.inferers import sliding_window_inference

            volume = torch.as_tensor(np.array(image, dtype=np.float32), device=device)
            with autocast_context(device, amp):
                logits = sliding_window_inference(
                    volume[None, None], roi_size, batch_size, model, overlap=0.25
                )
            return logits.argmax(1)[0].to(torch.uint8).cpu().numpy()
        labels = np.empty(image.shape, dtype=np.uint8)
        for start in range(0, image.shape[0], batch_size):
            chunk = np.array(image[start : start + batch_size], dtype=np.float32)  # copy out of the memmap
            batch = torch.from_numpy(chunk)[:, None].to(device, non_blocking=True)
            with autocast_context(device, amp):
                logits = model(batch)
            labels[start : start + batch_size] = logits.argmax(1).to(torch.uint8).cpu().numpy()
        return labels
    finally:
        model.train(was_training)
