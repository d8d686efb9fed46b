"""Speed options for the backbone on GPUs: channels-last memory format and bfloat16 autocast.

Both act on the timm module inside the model's `TimmBackbone` layer and last
for the life of the model object. They are not saved: a model written by
`model.save` and loaded again runs in float32 with the default memory format.

Mixed precision uses `torch.autocast` around the backbone's forward pass
rather than the Keras policy `mixed_bfloat16`. Under that policy (Keras
3.15) the timm module still receives float32 images and computes in float32,
because its weights are torch parameters that the policy does not cast. Only
the Dense heads would compute in bfloat16, and the age output would be
rounded to bfloat16 (steps of 0.25 years at 33 years). Here the backbone
computes in bfloat16 and returns float32 features, so the heads, the
losses, the optimizer and the weights stay in float32.
"""

import functools

import torch

MIXED_PRECISION_DTYPES = {"bfloat16": torch.bfloat16}


def apply_gpu_options(model, *, channels_last=False, mixed_precision=None):
    """Apply the backbone speed options of a training config to a built model.

    Args:
        model: `FaceAgeModel` (any Keras model with a `TimmBackbone` layer named
            `backbone`).
        channels_last: bool. Store the backbone's convolution weights and its
            input in `torch.channels_last` memory format (NHWC strides), which
            lets cuDNN use its faster NHWC kernels on tensor-core GPUs.
        mixed_precision: str or None. `"bfloat16"` runs the backbone's
            forward and backward passes under `torch.autocast` with bfloat16.
            None keeps float32.
    """
    if mixed_precision is not None and mixed_precision not in MIXED_PRECISION_DTYPES:
        raise ValueError(
            f"`mixed_precision` must be one of {sorted(MIXED_PRECISION_DTYPES)} or None. "
            f"Received: mixed_precision={mixed_precision!r}"
        )
    if not channels_last and mixed_precision is None:
        return

    module = model.get_layer("backbone").network.module
    if channels_last:
        # `Module.to` replaces each parameter's data in place, so the Keras
        # variables that share these parameters keep pointing at them.
        module.to(memory_format=torch.channels_last)
    # NOTE: an instance attribute `forward` replaces the class's method for
    # this module only; `torch.nn.Module.__call__` looks it up on the instance.
    module.forward = _wrap_forward(module.forward, channels_last, MIXED_PRECISION_DTYPES.get(mixed_precision))


def _wrap_forward(forward, channels_last, autocast_dtype):
    @functools.wraps(forward)
    def wrapped(images, *args, **kwargs):
        if channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        if autocast_dtype is None:
            return forward(images, *args, **kwargs)
        with torch.autocast(device_type=images.device.type, dtype=autocast_dtype):
            features = forward(images, *args, **kwargs)
        return features.float()

    return wrapped
