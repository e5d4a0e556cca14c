"""The M3 network: an XLM-RoBERTa backbone with the sparse and ColBERT heads, on one device."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
import transformers
from torch import nn

# transformers 5 passes a 4-D attention mask through to SDPA unchanged.
_TAKES_4D_BIAS = int(transformers.__version__.split(".")[0]) >= 5


@dataclass
class DeviceOutputs:
    """One batch's requested outputs, still on the device, in compact form.

    ``dense``: (batch, dim) normalised CLS vectors. ``sparse_rows``/``sparse_ids``/
    ``sparse_weights``: one entry per (row, token id) with its max weight > 0, sorted by row.
    ``colbert``: (sum of (length - 1), colbert_dim) normalised vectors of every token after CLS,
    rows of the batch one after another.
    """

    dense: torch.Tensor | None = None
    sparse_rows: torch.Tensor | None = None
    sparse_ids: torch.Tensor | None = None
    sparse_weights: torch.Tensor | None = None
    colbert: torch.Tensor | None = None


def _linear_from_state(state: dict[str, torch.Tensor]) -> nn.Linear:
    weight = state["weight"]
    head = nn.Linear(weight.shape[1], weight.shape[0], bias="bias" in state)
    head.load_state_dict(state)
    return head


class M3Model(nn.Module):
    """Backbone + heads in eval mode; ``forward`` computes only what is asked, in one pass."""

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
        self.colbert_head = (
            _linear_from_state(colbert_state).to(device) if colbert_state is not None else None
        )
        self.sparse_head = (
            _linear_from_state(sparse_state).to(device) if sparse_state is not None else None
        )
        self.register_buffer("ignored_ids", torch.tensor(ignored_ids, device=device))
        self.pad_id = int(backbone.config.pad_token_id)
        self.eval()

    @torch.inference_mode()
    def forward(  # type: ignore[override]
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        *,
        dense: bool = True,
        sparse: bool = True,
        colbert: bool = False,
    ) -> DeviceOutputs:
        """The asked outputs for a right-padded batch."""
        hidden = self.backbone(
            input_ids=input_ids, attention_mask=self._attention_bias(attention_mask)
        ).last_hidden_state
        out = DeviceOutputs()
        if dense:
            out.dense = F.normalize(hidden[:, 0].float(), dim=-1)
        if sparse:
            out.sparse_rows, out.sparse_ids, out.sparse_weights = self._sparse(hidden, input_ids)
        if colbert:
            vectors = self.colbert_head(hidden[:, 1:][attention_mask[:, 1:].bool()].float())
            out.colbert = F.normalize(vectors, dim=-1)
        return out

    def _attention_bias(self, attention_mask: torch.Tensor) -> torch.Tensor | None:
        # No mask when nothing is padded lets SDPA pick its fastest kernel. Otherwise a
        # (batch, 1, 1, length) additive bias, which SDPA broadcasts, instead of the
        # (batch, 1, length, length) mask transformers would expand a 2-D mask into.
        if bool(attention_mask.all()):
            return None
        if not _TAKES_4D_BIAS:
            return attention_mask
        dtype = self.backbone.dtype
        bias = torch.zeros(attention_mask.shape, dtype=dtype, device=attention_mask.device)
        bias.masked_fill_(attention_mask == 0, torch.finfo(dtype).min)
        return bias[:, None, None, :]

    def _sparse(
        self, hidden: torch.Tensor, input_ids: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        weights = torch.relu(self.sparse_head(hidden.float())).squeeze(-1)
        # Padding carries the pad id, so this also clears the padded positions.
        weights = weights.masked_fill(torch.isin(input_ids, self.ignored_ids), 0.0)
        # Max per token id over a (batch, distinct ids) buffer; the zero start drops weights <= 0.
        unique_ids, column = torch.unique(input_ids, return_inverse=True)
        table = weights.new_zeros(input_ids.shape[0], unique_ids.numel())
        table.scatter_reduce_(1, column, weights, reduce="amax", include_self=True)
        rows, cols = (table > 0).nonzero(as_tuple=True)
        return rows, unique_ids[cols], table[rows, cols]
