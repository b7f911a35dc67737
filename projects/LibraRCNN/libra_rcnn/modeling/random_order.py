"""Uniform draws without replacement inside groups, for a whole batch at once (docs/methods.md#iou-balanced-sampling).

The samplers of :mod:`libra_rcnn.modeling.sampling` draw, in every group of candidates (an IoU
bin, a GT box, an image), a given number of members uniformly at random and without
replacement. :class:`RandomOrder` puts the elements of every group in a uniformly random order
once; a draw then takes the first candidates of each group in that order. There is no Python
loop over boxes and no host-device synchronisation: the quotas stay tensors on the device.
"""
from typing import Optional

import torch

__all__ = ["RandomOrder", "sample_within_groups"]


class RandomOrder:
    """A uniformly random order of the elements inside each of ``num_groups`` groups.

    The elements are shuffled (``torch.randperm``), then sorted by group with a stable sort:
    each group keeps its members in shuffled order, so every order inside every group is
    equally likely.

    Args:
        groups: int64 (N,): the group of each element in [0, num_groups), or -1 for none.
        num_groups: G.
        generator: optional ``torch.Generator`` on the device of ``groups``; the device's
            default generator when None.
    """

    def __init__(self, groups: torch.Tensor, num_groups: int, generator: Optional[torch.Generator] = None):
        device = groups.device
        self.num_groups = num_groups
        group = torch.where(groups >= 0, groups, num_groups)
        perm = torch.randperm(groups.numel(), generator=generator, device=device)
        self.sorted_group, order = torch.sort(group.index_select(0, perm), stable=True)
        self.order = perm.index_select(0, order)
        # scatter_add_ rather than bincount, which reads the largest value back to the host on a GPU.
        sizes = torch.zeros(num_groups + 1, dtype=torch.int64, device=device)
        sizes.scatter_add_(0, group, torch.ones_like(group))
        # Position (in sorted order) of the first element of each element's group.
        self.group_start = (torch.cumsum(sizes, 0) - sizes).index_select(0, self.sorted_group)

    def draw(self, candidates: torch.Tensor, quotas: torch.Tensor, offset: int = 0) -> torch.Tensor:
        """In every group ``offset + j``, the first ``quotas[j]`` candidates in this order.

        That is ``min(quotas[j], #candidates)`` of the group's candidates, every subset of that
        size equally likely; groups outside ``[offset, offset + len(quotas))`` give none.

        Args:
            candidates: bool (N,).
            quotas: integer (Q,); negative values count as 0.
            offset: group of ``quotas[0]``.

        Returns:
            bool (N,): the drawn elements.
        """
        # index_select and scatter_ rather than indexing with [], several times faster on the CPU.
        picked = candidates.index_select(0, self.order)
        before = torch.cumsum(picked, 0) - picked.to(torch.int64)  # candidates before, in order
        rank = before - before.index_select(0, self.group_start)  # ... and in the same group
        limit = torch.zeros(self.num_groups + 1, dtype=torch.int64, device=candidates.device)
        limit[offset : offset + quotas.numel()] = quotas
        drawn = picked & (rank < limit.index_select(0, self.sorted_group))
        return torch.empty_like(drawn).scatter_(0, self.order, drawn)


def sample_within_groups(
    groups: torch.Tensor, quotas: torch.Tensor, generator: Optional[torch.Generator] = None
) -> torch.Tensor:
    """Draw ``min(quotas[g], size of group g)`` members of every group g, uniformly at random.

    Args:
        groups: int64 (N,): the group of each element in [0, G), or -1 for an element that is
            not a candidate.
        quotas: integer (G,): how many members to draw from each group (negative counts as 0).
        generator: optional ``torch.Generator`` on the device of ``groups``.

    Returns:
        bool (N,): True for the drawn elements; every subset of the wanted size of a group is
        equally likely.
    """
    return RandomOrder(groups, quotas.numel(), generator).draw(groups >= 0, quotas)
