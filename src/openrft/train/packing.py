"""Several completions of one prompt in one row of the trainer's completion forward pass.

A micro-batch runs its completions as ``[R, C]`` rows padded to the longest one, each continuing
its prompt's cached keys and values. Candidates of one prompt differ a lot in length (in an RFT
round a few run to the limit and most stop early), so many of those positions are padding. Here
the completions of each prompt are packed first-fit-decreasing into rows of the same width ``C``:
a packed row holds one prompt's cache and several completions side by side, and a 4-D attention
mask lets each completion token see the prompt and the earlier tokens of its own completion only,
at the positions it would have had alone. The maths is unchanged (each token sees exactly the same
keys); only the padded positions go.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class Packing:
    """Where each completion row ``r`` went: packed row ``row_R[r]``, from column ``offset_R[r]``."""

    row_R: torch.Tensor
    offset_R: torch.Tensor
    group_B: torch.Tensor  # the prompt of each packed row
    rows: int

    def unpack(self, packed_BCH: torch.Tensor) -> torch.Tensor:
        """``[R, C, ...]``: row ``r``'s columns of the packed rows (past its end: whatever follows)."""
        width = packed_BCH.shape[1]
        columns_RC = (self.offset_R[:, None] + torch.arange(width, device=self.offset_R.device)).clamp(
            max=width - 1
        )
        return packed_BCH[self.row_R[:, None], columns_RC]


def first_fit_rows(groups: list, lengths: list[int], width: int) -> tuple[list[int], list[int], list]:
    """First-fit decreasing, group by group: ``(row of each item, its offset, the group of each row)``.

    Items of one group (completions of one prompt) share rows of ``width`` columns; an item takes
    at least one column.
    """
    lengths = [max(1, n) for n in lengths]
    row_of, offset_of = [0] * len(groups), [0] * len(groups)
    used: list[int] = []  # columns taken in each row
    group_of_row: list = []
    open_rows: dict = {}
    for i in sorted(range(len(groups)), key=lambda i: (groups[i], -lengths[i])):
        candidates = open_rows.setdefault(groups[i], [])
        row = next((b for b in candidates if used[b] + lengths[i] <= width), None)
        if row is None:
            row = len(used)
            used.append(0)
            group_of_row.append(groups[i])
            candidates.append(row)
        row_of[i], offset_of[i] = row, used[row]
        used[row] += lengths[i]
    return row_of, offset_of, group_of_row


def plan_packing(row_group_R: torch.Tensor, lengths_R: torch.Tensor, width: int) -> Packing:
    """Completions of one prompt packed first-fit decreasing into rows of ``width`` columns."""
    row_of, offset_of, group_of_row = first_fit_rows(row_group_R.tolist(), lengths_R.tolist(), width)
    device = row_group_R.device
    return Packing(
        row_R=torch.tensor(row_of, dtype=torch.long, device=device),
        offset_R=torch.tensor(offset_of, dtype=torch.long, device=device),
        group_B=torch.tensor(group_of_row, dtype=torch.long, device=device),
        rows=len(group_of_row),
    )


def pack_inputs(
    packing: Packing,
    completion_ids_RC: torch.Tensor,
    seen_RC: torch.Tensor,
    start_R: torch.Tensor,
    prompt_mask_GP: torch.Tensor,
    pad_id: int = 0,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Packed ``(input_ids_BC, position_ids_BC, allowed_B1CL)``; ``L`` = prompt + ``C`` columns.

    ``allowed`` is True where a query may attend: its prompt's real tokens, and the seen tokens of its
    own completion up to itself. Every query may see its prompt, so no attention row is empty.
    """
    rows, width = completion_ids_RC.shape
    device = completion_ids_RC.device
    real_RC = torch.arange(width, device=device)[None, :] < seen_RC.sum(-1, keepdim=True)
    r_N, t_N = real_RC.nonzero(as_tuple=True)
    b_N, c_N = packing.row_R[r_N], packing.offset_R[r_N] + t_N
    ids_BC = completion_ids_RC.new_full((packing.rows, width), pad_id)
    ids_BC[b_N, c_N] = completion_ids_RC[r_N, t_N]
    positions_BC = torch.zeros((packing.rows, width), dtype=torch.long, device=device)
    positions_BC[b_N, c_N] = start_R[r_N] + t_N
    segment_BC = torch.full((packing.rows, width), -1, dtype=torch.long, device=device)
    segment_BC[b_N, c_N] = r_N
    seen_BC = torch.zeros((packing.rows, width), dtype=torch.bool, device=device)
    seen_BC[b_N, c_N] = seen_RC[r_N, t_N].bool()
    columns_C = torch.arange(width, device=device)
    own_BCC = (segment_BC[:, :, None] == segment_BC[:, None, :]) & (segment_BC[:, None, :] >= 0)
    allowed_completion_BCC = own_BCC & (columns_C[None, :] <= columns_C[:, None])[None] & seen_BC[:, None, :]
    allowed_prompt_BCP = prompt_mask_GP.bool()[packing.group_B][:, None, :].expand(-1, width, -1)
    allowed_B1CL = torch.cat([allowed_prompt_BCP, allowed_completion_BCC], dim=-1)[:, None]
    return ids_BC, positions_BC, allowed_B1CL


__all__ = ["Packing", "first_fit_rows", "pack_inputs", "plan_packing"]
