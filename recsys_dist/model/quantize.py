"""Int8 weights for serving: a smaller export, and an int8 item-scoring matmul on CPU.

The saved format (``model.safetensors``, no pickles) keeps every tensor of the fp32 export,
except that each quantized weight ``W [rows, cols]`` becomes two tensors::

    NAME        int8 [rows, cols]   round(W / scale[:, None]), in [-127, 127]
    NAME_scale  float32 [rows]      max |W[r]| / 127: symmetric, one scale per row (per
                                    output feature of a Linear, per item of the item table)

and ``config.json`` records ``"quantization": {"scheme": "int8", "weights": [NAME, ...]}``,
so a loader knows the format before it reads a tensor (:func:`load_model`). The quantized
weights are those of every ``nn.Linear`` (encoder, MLM head, any other head) and the tied item
table, which is both the input embedding and the output decoder and, with a large catalogue,
nearly all of the file; and, in a model with item text, the ``item_text`` buffer (``[V, 384]``,
larger still). Embeddings of positions, time gaps and ratings, LayerNorms and biases are small
and stay fp32. With item text the table the fast path scores is the fused one (ID rows plus
projected text, ``Bert4Rec.item_table``), quantized again per row when the model is built.

Loading dequantizes the weights into an ordinary :class:`Bert4Rec` (:class:`Int8Bert4Rec`),
so every path (input embeddings, the rating head, explanations, interest forecasts that read
the item table) sees exactly the numbers the int8 file holds. Only the item-scoring matmul,
``head(h) @ E^T + b`` over the whole catalogue (``Bert4Rec.item_logits``: the main cost of a
request at large catalogues, and not an ``nn.Linear``) runs in int8 on CPU, with fbgemm's
dynamic-quantization kernel ``quantized::linear_dynamic``, the kernel that
``torch.ao.quantization.quantize_dynamic`` puts inside an ``nn.Linear``. The encoder's own
matrices (64 wide by default) are computed in fp32: their int8 kernel was no faster
(docs/benchmarks.md, "Quantized fast path").

Why not ``quantize_dynamic`` itself: in torch 2.13 ``torch.ao.quantization`` is deprecated in
favour of torchao's ``quantize_``, whose CPU int8 paths in eager mode are
``torch._weight_int8pack_mm`` (weight-only) and ``torch._int_mm`` (int8 activations); on this
project's AVX2 machines both were slower than the fp32 matmul, and its modules would be
pickled by ``torch.save``. The creation of the quantized tensor the fbgemm kernel is packed
from is deprecated too (a warning, silenced here); where it is gone or fails, the packed table
is ``None`` and scoring uses the fp32 matmul over the dequantized table: the same artefact
still loads and ranks the same, only the speed is lost. On a GPU the fp32 path runs as well.

Activations are quantized per row, so a user's scores do not depend on which other requests
share the batch: each row is scaled to max |h| = 1, and two sentinel rows of +1 and -1 pin
the kernel's per-tensor range to [-1, 1]; the logits are scaled back per row.
"""

from __future__ import annotations

import copy
import logging
import warnings
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from recsys_dist.errors import UserInputError
from recsys_dist.model.bert4rec import WEIGHTS_FILE, Bert4Rec
from recsys_dist.model.configuration import Bert4RecConfig
from recsys_dist.schema import NUM_SPECIAL_TOKENS, QUANTIZATION_SCHEMES

logger = logging.getLogger(__name__)

INT8 = "int8"
SCHEMES = QUANTIZATION_SCHEMES  # what ``--quantize`` accepts (INT8); fp32 is the default
CONFIG_KEY = "quantization"  # config.json: {"scheme": ..., "weights": [...]}
SCALE_SUFFIX = "_scale"
QMAX = 127  # symmetric int8: -127 .. 127 (-128 unused, so the range is symmetric)


# --- the format --------------------------------------------------------------------------------


def quantization_of(config: Bert4RecConfig) -> dict[str, Any] | None:
    """The ``quantization`` record of a model config, ``None`` for an fp32 model."""
    return getattr(config, CONFIG_KEY, None)


def quantized_weights(model: Bert4Rec) -> list[str]:
    """State-dict names of the weights int8 stores: every ``nn.Linear``'s, the item table
    and the item text buffer (with ``config.item_text``)."""
    linears = {f"{name}.weight" for name, m in model.named_modules() if isinstance(m, nn.Linear)}
    table = next(n for n, p in model.named_parameters() if p is model.item_embedding.weight)
    text = {"item_text"} if model.item_text is not None else set()
    return sorted({*linears, table, *text})


def quantize_rows(weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``[rows, cols]`` float -> int8 ``[rows, cols]`` and float32 scales ``[rows]``.

    An all-zero row (PAD's embedding) gets scale 1, so it dequantizes to exact zeros.
    """
    weight = weight.detach().float()
    scale = weight.abs().amax(dim=1) / QMAX  # [rows]
    scale = torch.where(scale > 0, scale, torch.ones_like(scale))
    ints = torch.round(weight / scale[:, None]).clamp(-QMAX, QMAX).to(torch.int8)
    return ints, scale


def dequantize_rows(ints: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """The float32 weight an int8 ``[rows, cols]`` and its ``[rows]`` scales stand for."""
    return ints.float() * scale[:, None]


def quantize(model: Bert4Rec, scheme: str = INT8) -> Int8Bert4Rec:
    """An int8 copy of ``model``: exactly what saving it and loading it back gives.

    Raises:
        UserInputError: For a scheme other than :data:`SCHEMES`, or a model that already is.
    """
    _check_scheme(scheme, "quantize")
    if quantization_of(model.config) is not None:
        raise UserInputError(f"the model is already quantized ({quantization_of(model.config)})")
    names = quantized_weights(model)
    state = {name: t.detach().cpu().contiguous() for name, t in model.state_dict().items()}
    ints = {name: quantize_rows(state[name]) for name in names}
    config = copy.deepcopy(model.config)
    setattr(config, CONFIG_KEY, {"scheme": scheme, "weights": names})
    return Int8Bert4Rec.from_int8(config, state, ints)


def load_model(directory: str | Path, map_location: str | torch.device = "cpu") -> Bert4Rec:
    """Rebuild a saved model, fp32 (:meth:`Bert4Rec.load`) or int8 (:class:`Int8Bert4Rec`),
    as its ``config.json`` says."""
    config = Bert4RecConfig.from_pretrained(directory)
    if quantization_of(config) is None:
        return Bert4Rec.load(directory, map_location=map_location)
    return Int8Bert4Rec.load(directory, map_location=map_location)


def _check_scheme(scheme: Any, where: str) -> None:
    if scheme not in SCHEMES:
        raise UserInputError(
            f"{where}: unknown quantization {scheme!r}; this version knows {', '.join(SCHEMES)}"
        )


# --- the model ---------------------------------------------------------------------------------


class Int8Bert4Rec(Bert4Rec):
    """A :class:`Bert4Rec` rebuilt from int8 weights, for inference only.

    Its parameters are the dequantized weights, so it computes what the int8 file says
    everywhere; :meth:`item_logits` scores the catalogue with the int8 table on CPU (see the
    module docstring). :meth:`save` writes the int8 format again.

    Attributes:
        int8_kernel: Score with the int8 kernel where it can (True); False forces the fp32
            matmul over the dequantized table (what a GPU runs): benchmarks compare the two.
    """

    def __init__(self, config: Bert4RecConfig) -> None:
        record = quantization_of(config)
        if record is None:
            raise ValueError("Int8Bert4Rec needs a config with a quantization record")
        _check_scheme(record.get("scheme"), "config.json")
        super().__init__(config)
        self.int8_kernel = True
        self._table: Any = None  # fbgemm's packed int8 item table, or None: fp32 scoring
        self._ints: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}  # what save() writes

    @classmethod
    def from_int8(
        cls,
        config: Bert4RecConfig,
        state: dict[str, torch.Tensor],
        ints: dict[str, tuple[torch.Tensor, torch.Tensor]],
    ) -> Int8Bert4Rec:
        """Build from an fp32 ``state`` whose quantized ``ints`` (name: int8, scales) win."""
        model = cls(config)
        names = quantization_of(config)["weights"]
        if set(ints) != set(names):
            raise RuntimeError(f"int8 weights {sorted(ints)} do not match the config's {names}")
        weights = {name: dequantize_rows(*ints[name]) for name in names}
        model.load_state_dict({**state, **weights}, strict=True)
        model._ints = ints
        table = next(n for n, p in model.named_parameters() if p is model.item_embedding.weight)
        if model.text_projection is None:
            model._table = _pack(*ints[table])
        else:  # the scored table is the fused one: ID rows plus the projected text
            with torch.no_grad():
                model._table = _pack(*quantize_rows(model.item_table()))
        return model.eval()

    @classmethod
    def load(cls, directory: str | Path, map_location: str | torch.device = "cpu") -> Int8Bert4Rec:
        """Rebuild a model saved by :meth:`save`, in eval mode.

        Raises:
            RuntimeError: If the weights do not match the config (missing, unexpected, or a
                quantized weight stored without its scales or not as int8).
        """
        directory = Path(directory)
        config = Bert4RecConfig.from_pretrained(directory)
        state = load_file(str(directory / WEIGHTS_FILE))
        ints = {}
        for name in quantization_of(config)["weights"]:
            values, scale = state.pop(name, None), state.pop(name + SCALE_SUFFIX, None)
            if values is None or scale is None or values.dtype != torch.int8:
                raise RuntimeError(f"{directory}: {name} is not stored as int8 with its scales")
            ints[name] = values, scale.float()
        return cls.from_int8(config, state, ints).to(map_location)

    def save(self, directory: str | Path) -> None:
        """Write ``config.json`` (with its quantization record) and the int8 weights."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        self.config.save_pretrained(directory)
        state = {name: t.detach().cpu().contiguous() for name, t in self.state_dict().items()}
        for name, (values, scale) in self._ints.items():
            state[name] = values.contiguous()
            state[name + SCALE_SUFFIX] = scale.contiguous()
        metadata = {"format": "pt", CONFIG_KEY: quantization_of(self.config)["scheme"]}
        save_file(state, str(directory / WEIGHTS_FILE), metadata=metadata)

    def item_logits(self, hidden: torch.Tensor, table: torch.Tensor | None = None) -> torch.Tensor:
        """The tied head, ``[..., H] -> [..., V]``, over the int8 table where it can."""
        usable = self._table is not None and self.int8_kernel and not self.training
        if not usable or hidden.device.type != "cpu" or torch.is_grad_enabled():
            return super().item_logits(hidden, table)
        h = self.head(hidden).float()  # [..., H]
        rows = h.reshape(-1, h.shape[-1])  # [N, H]
        logits = _int8_linear(rows, self._table, self.output_bias)  # [N, V]
        logits = logits.reshape(*h.shape[:-1], logits.shape[-1])  # [..., V]
        logits[..., :NUM_SPECIAL_TOKENS] = float("-inf")  # PAD and MASK are never targets
        return logits


def _pack(ints: torch.Tensor, scale: torch.Tensor) -> Any:
    """fbgemm's packed form of an int8 ``[V, H]`` table with per-row scales, or ``None``
    where this torch cannot make one (scoring then runs the fp32 matmul)."""
    try:
        with warnings.catch_warnings():
            # torch 2.13 warns that creating quantized tensors is deprecated (module docstring).
            warnings.simplefilter("ignore", UserWarning)
            zero = torch.zeros(len(scale), dtype=torch.long)
            weight = torch._make_per_channel_quantized_tensor(ints, scale.double(), zero, 0)
            return torch.ops.quantized.linear_prepack(weight, None)
    except (AttributeError, NotImplementedError, RuntimeError) as error:
        logger.warning("no int8 matmul in this torch build (%s); scoring in fp32", error)
        return None


def _int8_linear(rows: torch.Tensor, table: Any, bias: torch.Tensor) -> torch.Tensor:
    """``rows @ table^T + bias`` with each row quantized on its own: ``[N, H] -> [N, V]``."""
    norms = rows.abs().amax(dim=1, keepdim=True).clamp(min=torch.finfo(rows.dtype).tiny)  # [N, 1]
    ones = torch.ones(1, rows.shape[1], dtype=rows.dtype)  # [1, H]
    unit = torch.cat([rows / norms, ones, -ones])  # [N + 2, H], the range pinned to [-1, 1]
    # reduce_range=True: 7-bit activations, as x86 needs (8-bit ones overflow AVX2's 16-bit
    # pairwise sums: the logits were off by ~20 % of their range in a test).
    out = torch.ops.quantized.linear_dynamic(unit, table, True)[:-2]  # [N, V]
    return out.mul_(norms).add_(bias.detach())
