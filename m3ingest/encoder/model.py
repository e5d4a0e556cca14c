"""The M3 network: an XLM-RoBERTa backbone with the sparse and ColBERT heads, on one device."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
import transformers
from torch import nn

from m3ingest.encoder.checkpoint import CheckpointError

# transformers 5 passes a 4-D attention mask through to SDPA unchanged.
_TAKES_4D_BIAS = int(transformers.__version__.split(".")[0]) >= 5


def load_linear_head(directory: Path, filename: str) -> dict[str, torch.Tensor] | None:
    """The state dict of a head file (tensors only, no arbitrary unpickling); None if absent."""
    path = directory / filename
    if not path.is_file():
        return None
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise CheckpointError(f"cannot load head file {path}: {exc}") from exc
    if not isinstance(state, dict) or "weight" not in state:
        raise CheckpointError(f"head file {path} is not a Linear state dict (no 'weight' tensor)")
    return state


@dataclass
class DeviceOutputs:
    """One batch's requested outputs for its first ``n`` (real) rows, still on the device.

    ``dense``: (n, dim) normalised CLS vectors. ``sparse``: (n, length) ReLU weights, zero at
    special tokens and padding. ``colbert``: (sum of (length - 1), colbert_dim) normalised vectors
    of every token after CLS, rows one after another. ``finite``: a boolean scalar, False when any
    returned value is inf or NaN (only computed when asked).
    """

    dense: torch.Tensor | None = None
    sparse: torch.Tensor | None = None
    colbert: torch.Tensor | None = None
    finite: torch.Tensor | None = None


def _linear_from_state(state: dict[str, torch.Tensor]) -> nn.Linear:
    weight = state["weight"]
    head = nn.Linear(weight.shape[1], weight.shape[0], bias="bias" in state)
    head.load_state_dict(state)
    return head


class M3Model(nn.Module):
    """Backbone + heads in eval mode; the backbone's fixed-shape pass and the heads run apart
    (callers run both under ``torch.inference_mode``)."""

    ignored_ids: torch.Tensor

    def __init__(
        self,
        checkpoint: Path,
        colbert_state: dict[str, torch.Tensor] | None,
        sparse_state: dict[str, torch.Tensor] | None,
        ignored_ids: list[int],
        device: torch.device,
        dtype: torch.dtype,
    ) -> None:
        super().__init__()
        backbone = transformers.AutoModel.from_pretrained(
            checkpoint, attn_implementation="sdpa", add_pooling_layer=False
        )
        self.backbone = backbone.to(device=device, dtype=dtype)
        # Heads stay float32: they are a sliver of the work and keep outputs close to fp32.
        self.colbert_head = _linear_from_state(colbert_state).to(device) if colbert_state is not None else None
        self.sparse_head = _linear_from_state(sparse_state).to(device) if sparse_state is not None else None
        self.register_buffer("ignored_ids", torch.tensor(ignored_ids, device=device))
        self.pad_id = int(backbone.config.pad_token_id)
        self.device = device
        self.dtype = dtype
        self.eval()

    def hidden(self, input_ids: torch.Tensor, lengths: torch.Tensor, masked: bool) -> torch.Tensor:
        """The last hidden state of a right-padded (rows, length) batch; ``lengths``: (rows,).

        ``masked`` False means no row is padded. The pass has no host synchronisation and no
        data-dependent shapes, so it can be captured in a CUDA graph or compiled per shape.
        """
        bias = self._attention_bias(lengths, input_ids.shape[1]) if masked else None
        return self.backbone(input_ids=input_ids, attention_mask=bias).last_hidden_state

    def heads(
        self,
        hidden: torch.Tensor,
        input_ids: torch.Tensor,
        n: int,
        colbert_index: torch.Tensor | None,
        *,
        dense: bool,
        sparse: bool,
        check_finite: bool = False,
    ) -> DeviceOutputs:
        """The asked outputs of the first ``n`` rows; ColBERT rows are ``colbert_index``'s
        positions in the flattened (rows x length) batch, None when not asked."""
        out = DeviceOutputs()
        if dense:
            out.dense = F.normalize(hidden[:n, 0].float(), dim=-1)
        if sparse:
            assert self.sparse_head is not None, "sparse asked of a checkpoint without its head"
            weights = torch.relu(self.sparse_head(hidden[:n].float())).squeeze(-1)
            # Padding carries the pad id, so this also clears the padded positions.
            out.sparse = weights.masked_fill(torch.isin(input_ids[:n], self.ignored_ids), 0.0)
        if colbert_index is not None:
            assert self.colbert_head is not None, "colbert asked of a checkpoint without its head"
            tokens = hidden.reshape(-1, hidden.shape[-1]).index_select(0, colbert_index)
            out.colbert = F.normalize(self.colbert_head(tokens.float()), dim=-1)
        if check_finite:
            parts = [t for t in (out.dense, out.sparse, out.colbert) if t is not None]
            out.finite = torch.stack([torch.isfinite(t).all() for t in parts]).all()
        return out

    def _attention_bias(self, lengths: torch.Tensor, width: int) -> torch.Tensor:
        # A (rows, 1, 1, length) additive bias, which SDPA broadcasts, instead of the
        # (rows, 1, length, length) mask transformers would expand a 2-D mask into.
        keep = torch.arange(width, device=lengths.device)[None, :] < lengths[:, None]
        if not _TAKES_4D_BIAS:
            return keep.long()
        dtype = self.backbone.dtype
        bias = torch.zeros(keep.shape, dtype=dtype, device=lengths.device)
        bias.masked_fill_(~keep, torch.finfo(dtype).min)
        return bias[:, None, None, :]
