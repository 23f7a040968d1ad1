"""``save_pretrained`` / ``from_pretrained`` for the workbook's models, in half precision.

The ecosystem's convention for shipping a model is a folder of ``config.json`` (the constructor's
arguments) and ``model.safetensors`` (the weights), written and read by huggingface_hub's
:class:`~huggingface_hub.PyTorchModelHubMixin`; a Hub id works in place of the folder on a machine with
network.  Two things differ from the mixin's defaults, both so that a shipped file stays small and a
stale one fails loudly:

- floating-point tensors are stored as float16 (half the bytes of float32) and come back as float32;
- loading is strict: a file whose tensors do not match the model's (a renamed part, a changed size)
  raises instead of leaving some weights at their random initialisation.

A model class takes it as a second base (``class SelfBootTok(nn.Module, HalfPrecisionHubMixin)``) and
accepts its config as a dataclass or as the dict that ``config.json`` holds.
"""
from __future__ import annotations

import os
from pathlib import Path

import torch
from huggingface_hub import PyTorchModelHubMixin, constants, hf_hub_download
from safetensors.torch import load_file, save_file

STORED_DTYPE = torch.float16


def half_state(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    """``module``'s state with every floating-point tensor in float16 (integer buffers as they are)."""
    return {k: (v.to(STORED_DTYPE) if v.is_floating_point() else v).detach().contiguous().cpu()
            for k, v in module.state_dict().items()}


class HalfPrecisionHubMixin(PyTorchModelHubMixin):
    """:class:`~huggingface_hub.PyTorchModelHubMixin` with float16 storage and strict float32 loading."""

    def _save_pretrained(self, save_directory: Path) -> None:
        save_file(half_state(self), str(Path(save_directory) / constants.SAFETENSORS_SINGLE_FILE),
                  metadata={"format": "pt", "dtype": "float16"})

    @classmethod
    def _from_pretrained(cls, *, model_id: str, revision, cache_dir, force_download, local_files_only, token,
                         map_location: str = "cpu", strict: bool = True, **model_kwargs):
        if os.path.isdir(model_id):
            path = os.path.join(model_id, constants.SAFETENSORS_SINGLE_FILE)
            if not os.path.exists(path):
                raise FileNotFoundError(f"{path} is missing: a pretrained folder holds {constants.CONFIG_NAME} and "
                                        f"{constants.SAFETENSORS_SINGLE_FILE} (written by save_pretrained)")
        else:
            path = hf_hub_download(repo_id=model_id, filename=constants.SAFETENSORS_SINGLE_FILE, revision=revision,
                                   cache_dir=cache_dir, force_download=force_download, token=token,
                                   local_files_only=local_files_only)
        model = cls(**model_kwargs)
        tensors = load_file(path, device=str(map_location))
        state = model.state_dict()
        tensors = {k: v.to(state[k].dtype) if k in state else v for k, v in tensors.items()}
        model.load_state_dict(tensors, strict=strict)
        return model.to(map_location).eval()
