"""The torch runner: a transformers audio classifier (any ``AutoModelForAudioClassification``,
the compact network included) in one precision on CPU or CUDA (built on the main thread, run
by the inference worker threads).

:func:`prepare_module` puts a loaded module on its device in fp32, bf16, fp16 or dynamic int8
(CPU, Linear layers only); :class:`TorchRunner` runs it. It imports nothing of the loader:
``streamer.models.loading`` reads the checkpoint and builds the runner.

Thread-safety: ``predict_proba`` may be called from several worker threads at once. The module
is in eval mode and runs under ``torch.inference_mode`` (no autograd state, no buffers written),
which torch allows from several threads; the frame cache has its own lock.
``set_worker_threads`` sets torch's intra-op thread count of the calling thread only.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np
from numpy.typing import NDArray

from streamer.errors import ModelError
from streamer.models.encoder_cache import FrameCache
from streamer.models.runner import Runner
from streamer.models.settings import COMPACT_MODEL_TYPE

__all__ = ["TORCH_PRECISIONS", "TorchRunner", "prepare_module", "splittable", "wav2vec2_head"]

TORCH_PRECISIONS = ("fp32", "bf16", "fp16", "int8")
# the tensors of a feature extractor's output that models take (others, e.g. lengths, are not)
_MODEL_INPUTS = ("input_values", "input_features", "attention_mask")


def splittable(model: Any) -> bool:
    """A wav2vec2 classifier whose conv encoder and the rest can run as two parts."""
    config = model.config
    return (
        getattr(config, "model_type", None) == "wav2vec2"
        and hasattr(model, "wav2vec2")
        and hasattr(model, "projector")
        and not getattr(config, "use_weighted_layer_sum", False)
    )


def wav2vec2_head(model: Any, extract_features: Any) -> Any:
    """Logits from conv features (batch, channels, frames): Wav2Vec2Model.forward after the
    conv encoder, then the sequence-classification head (mean pooling, no attention mask)."""
    w2v = model.wav2vec2
    hidden, _ = w2v.feature_projection(extract_features.transpose(1, 2))
    hidden = w2v.encoder(hidden).last_hidden_state
    if w2v.adapter is not None:
        hidden = w2v.adapter(hidden)
    return model.classifier(model.projector(hidden).mean(dim=1))


def prepare_module(model: Any, *, device: str, precision: str) -> Any:
    """``model`` in eval mode on ``device`` in ``precision`` (fp32, bf16, fp16; int8 = dynamic
    int8 Linear layers, CPU only, not for the compact CNN). Converts ``model`` in place except
    for int8, which returns a quantised copy."""
    import torch

    if precision not in TORCH_PRECISIONS:
        raise ModelError(f"torch runs {', '.join(TORCH_PRECISIONS)}, not {precision!r}")
    if precision != "int8":
        dtype = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[precision]
        return model.to(device=device, dtype=dtype).eval()
    if device != "cpu":
        raise ModelError("torch int8 runs on CPU only; use --model-device cpu")
    if getattr(model.config, "model_type", None) == COMPACT_MODEL_TYPE:
        raise ModelError("torch int8 quantises Linear layers; the compact model is a CNN "
                         "(use onnx int8 or fp32)")
    import warnings

    with warnings.catch_warnings():
        # torch.ao.quantization announces its future move to torchao; still works
        warnings.filterwarnings("ignore", category=DeprecationWarning,
                                message=r"torch\.ao\.quantization is deprecated")
        warnings.filterwarnings("ignore", category=UserWarning,
                                message=r"torch\.quantize_per_tensor")
        quantised = torch.ao.quantization.quantize_dynamic(
            model.to(device="cpu", dtype=torch.float32).eval(), {torch.nn.Linear},
            dtype=torch.qint8,
        )
    return quantised.eval()


@dataclass(eq=False)
class TorchRunner(Runner):
    """A torch audio classifier as the engine drives it (see the module docstring).

    ``model`` must already be on ``device`` in eval mode (:func:`prepare_module`); inputs are
    cast to the dtype of its parameters. ``precision`` names that setting for logs.
    """

    backend: ClassVar[str] = "torch"

    name: str
    labels: tuple[str, ...]
    sample_rate_hz: int
    device: str
    model: Any = field(repr=False)
    feature_extractor: Any = field(repr=False)
    precision: str = "fp32"
    temperature: float = 1.0
    narrowband_ok: bool = False
    encoder_cache: FrameCache | None = field(default=None, repr=False)
    preferred_batch: int = 1
    _dtype: Any = field(init=False, repr=False)
    _split: bool = field(init=False, repr=False)

    def __post_init__(self) -> None:
        # dynamic int8 keeps fp32 parameters (convolutions, norms) beside its packed Linears
        self._dtype = next(self.model.parameters()).dtype
        self._split = splittable(self.model)

    @property
    def model_type(self) -> str | None:
        return getattr(self.model.config, "model_type", None)

    @property
    def split(self) -> bool:
        return self._split

    def set_worker_threads(self, threads: int) -> None:
        """torch's intra-op threads for the calling worker thread (CPU; CUDA needs none)."""
        if self.device == "cpu":
            import torch

            torch.set_num_threads(threads)

    def _tensor(self, values: NDArray[Any]) -> Any:
        import torch

        tensor = torch.from_numpy(np.ascontiguousarray(values))
        if tensor.is_floating_point():
            return tensor.to(self.device, self._dtype)
        return tensor.to(self.device)

    def full(self, inputs: dict[str, NDArray[Any]]) -> NDArray[np.float32]:
        import torch

        tensors = {key: self._tensor(value) for key, value in inputs.items()
                   if key in _MODEL_INPUTS}
        with torch.inference_mode():
            logits = self.model(**tensors).logits
        return logits.float().cpu().numpy()

    def encode(self, values: NDArray[np.float32]) -> NDArray[np.float32]:
        import torch

        with torch.inference_mode():
            feats = self.model.wav2vec2.feature_extractor(self._tensor(values))
        return feats.float().cpu().numpy()

    def head(self, feats: NDArray[np.float32]) -> NDArray[np.float32]:
        import torch

        with torch.inference_mode():
            logits = wav2vec2_head(self.model, self._tensor(feats))
        return logits.float().cpu().numpy()
