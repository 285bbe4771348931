"""Packing: several examples share one row so no compute goes to padding, with attention kept per example.

A packed row carries `position_ids` that restart at 0 for every example and NO 2-D attention mask. From
exactly that, transformers (masking_utils.find_packed_sequence_indices, used by the sdpa and eager attention
paths) builds a block-diagonal causal mask: a new example starts wherever the position does not grow by one.
Passing any 2-D mask, even all ones, turns that detection off and lets packed examples see each other, and so
does a KV cache; CausalLMLoss (losses.py, run by training and by the test loss) therefore calls the model with
`use_cache=False` and no attention mask.

That mask is quadratic in the row length, so rows are capped at a token budget (the data's `max_length`)
rather than concatenating a whole batch into one long row. On CPU training goes further (train/model.py selects
it) and computes attention per example (`packed_attention`, a transformers attention function), where no mask
is needed.

Flash attention has no mask and finds packed examples only in a batch of one row, so on a GPU under it a
micro-batch's packed rows are flattened into one row first (`attention_plan`, `batches.flatten_packed`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from tunesmith.prepare.tokenization import IGNORE_INDEX

if TYPE_CHECKING:
    import torch

MIN_ROW_TOKENS = 512
"""Packed rows may hold this many tokens even when examples are short: with rows of even width, fewer and
longer rows leave almost no padding, and at this length the per-example attention mask costs little next to
the model's matrix products."""


def pack_rows(lengths: list[int], max_row_tokens: int) -> list[list[int]]:
    """Group example indices into as few rows as the budget allows, of nearly equal width.

    Rows are padded to the widest one, so a full row next to a nearly empty one wastes almost half the batch
    (8 examples of 72 tokens under a 512 budget: 512 + 64 -> 41% padding). So ceil(total / budget) rows are
    opened first, and examples, longest first, each go into the emptiest row (worst-fit decreasing,
    deterministic: ties keep the input order); a new row opens only when no row has room under the budget.
    An example longer than the budget gets a row of its own.

    >>> pack_rows([5, 3, 4, 2], max_row_tokens=8)
    [[0, 3], [1, 2]]
    """
    if not lengths:
        return []
    rows: list[list[int]] = [[] for _ in range(-(-sum(lengths) // max_row_tokens))]
    used = [0] * len(rows)
    for i in sorted(range(len(lengths)), key=lambda i: -lengths[i]):
        r = min(range(len(rows)), key=lambda r: used[r])
        if used[r] and used[r] + lengths[i] > max_row_tokens:
            rows.append([])
            used.append(0)
            r = len(rows) - 1
        rows[r].append(i)
        used[r] += lengths[i]
    return [sorted(row) for row in rows if row]


def collate_packed(examples: list[dict], max_row_tokens: int, pad_token_id: int) -> dict:
    """Pack tokenized examples into right-padded rows with per-example `position_ids` and labels.

    Each example's first label becomes IGNORE_INDEX: after the usual one-token shift it would otherwise be
    predicted from the previous example's last token. Unpacked, that label is never used either, so packed and
    unpacked losses are the same. Padding gets position 0 (a one-token "example" of its own) and label -100.

    >>> batch = collate_packed([{"input_ids": [5, 6], "labels": [5, 6]}, {"input_ids": [7], "labels": [7]}], 4, 0)
    >>> batch["input_ids"].tolist(), batch["position_ids"].tolist(), batch["labels"].tolist()
    ([[5, 6, 7]], [[0, 1, 0]], [[-100, 6, -100]])
    """
    import torch

    rows = pack_rows([len(e["input_ids"]) for e in examples], max_row_tokens)
    width = max(sum(len(examples[i]["input_ids"]) for i in row) for row in rows)
    input_ids = torch.full((len(rows), width), pad_token_id, dtype=torch.long)
    position_ids = torch.zeros((len(rows), width), dtype=torch.long)
    labels = torch.full((len(rows), width), IGNORE_INDEX, dtype=torch.long)
    for r, row in enumerate(rows):
        start = 0
        for i in row:
            ids, labs = examples[i]["input_ids"], examples[i]["labels"]
            end = start + len(ids)
            input_ids[r, start:end] = torch.tensor(ids)
            position_ids[r, start:end] = torch.arange(len(ids))
            labels[r, start + 1:end] = torch.tensor(labs[1:], dtype=torch.long)
            start = end
    return {"input_ids": input_ids, "position_ids": position_ids, "labels": labels}


# ----------------------------------------------------------------------------------------------------------------
# attention computed per example


PACKED_ATTENTION = "tunesmith_packed"
"""The attention implementation training selects on CPU (train/model.py): per example when a PackedLayout is
passed, else sdpa."""

BUCKET_OVERHEAD = 128 * 128
"""What one more group of examples costs, in attention scores per head: the fixed cost of its dozen small ops."""


@dataclass(frozen=True)
class PackedLayout:
    """Where each example of a packed batch sits, so attention can run per example instead of per row.

    Examples are grouped by length into buckets; bucket b's examples are gathered into a `gather[b]` of shape
    (examples, longest) of flat row positions (each example's last position repeated after its end: causal
    attention never lets a real token see them). `scatter` maps every flat row position to its place in the
    buckets' outputs laid end to end, or to one zero row after them (padding and one-token examples, which
    nothing attends to and no loss reads). `causal[b]` is bucket b's additive causal mask, made once for all
    layers.
    """

    gather: list[torch.Tensor]
    scatter: torch.Tensor
    causal: list[torch.Tensor]


def example_spans(position_ids: list[list[int]]) -> list[tuple[int, int]]:
    """(flat start, length) of every example of two or more tokens: one starts where the position does not grow
    by one (the rule transformers uses to find packed sequences).

    >>> example_spans([[0, 1, 2, 0, 1, 0], [0, 1, 2, 3, 0, 0]])
    [(0, 3), (3, 2), (6, 4)]
    """
    spans = []
    for r, row in enumerate(position_ids):
        start = 0
        for t in range(1, len(row) + 1):
            if t == len(row) or row[t] != row[t - 1] + 1:
                if t - start > 1:
                    spans.append((r * len(row) + start, t - start))
                start = t
    return spans


def length_buckets(lengths: list[int]) -> list[list[int]]:
    """Indices of `lengths` grouped so that sum(bucket size × longest²) plus a fixed cost per bucket is least.

    Padding every example to the longest of the batch would make one long example cost as much as all of them;
    the best grouping of the sorted lengths is a small dynamic program.

    >>> length_buckets([300, 20, 25, 310])
    [[3, 0], [2, 1]]
    """
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
    best, cut = [0] + [None] * len(order), [0] * (len(order) + 1)  # best[j]: cost of the j longest examples
    for j in range(1, len(order) + 1):
        for i in range(j):
            cost = best[i] + (j - i) * lengths[order[i]] ** 2 + BUCKET_OVERHEAD
            if best[j] is None or cost < best[j]:
                best[j], cut[j] = cost, i
    buckets, j = [], len(order)
    while j:
        buckets.append(order[cut[j]:j])
        j = cut[j]
    return buckets[::-1]


def packed_layout(position_ids) -> PackedLayout:
    """The PackedLayout of rows whose `position_ids` restart at 0 for each example (as collate_packed makes)."""
    import torch

    spans = example_spans(position_ids.tolist())
    gather, places, offset = [], [], 0  # places: (flat start, length, place of its first output)
    for bucket in length_buckets([length for _, length in spans]):
        longest = spans[bucket[0]][1]
        index = torch.empty((len(bucket), longest), dtype=torch.long)
        for e, i in enumerate(bucket):
            start, length = spans[i]
            index[e, :length] = torch.arange(start, start + length)
            index[e, length:] = start + length - 1
            places.append((start, length, offset + e * longest))
        gather.append(index.to(position_ids.device))
        offset += len(bucket) * longest
    scatter = torch.full((position_ids.numel(),), offset, dtype=torch.long)  # `offset`: the zero row
    for start, length, place in places:
        scatter[start:start + length] = torch.arange(place, place + length)
    causal = [torch.full((index.shape[1],) * 2, float("-inf"), device=position_ids.device).triu(1)
              for index in gather]
    return PackedLayout(gather, scatter.to(position_ids.device), causal)


def packed_attention(module, query, key, value, attention_mask, scaling: float, dropout: float = 0.0,
                     packed_layout: PackedLayout | None = None, **kwargs):
    """Causal attention of each example with itself only, for packed rows (a transformers attention function).

    A row of 8 examples of 70 tokens costs 8 × 70² attention scores instead of 560² under a block-diagonal mask:
    ~3x less attention time per layer on a CPU. The arithmetic is eager attention's (scores in the input dtype,
    softmax in fp32), so numbers match it. Without a layout (generation, evaluation with a 2-D mask) this is
    transformers' sdpa attention.
    """
    import torch
    import torch.nn.functional as F

    if packed_layout is None:
        from transformers.integrations.sdpa_attention import sdpa_attention_forward

        return sdpa_attention_forward(module, query, key, value, attention_mask, scaling=scaling, dropout=dropout,
                                      **kwargs)
    rows, heads, width, _ = query.shape
    kv_heads, group = key.shape[1], heads // key.shape[1]

    def per_example(states, index):  # (rows, h, width, d) -> (examples, h, longest, d)
        flat = states.transpose(1, 2).reshape(rows * width, states.shape[1], states.shape[-1])
        return flat.index_select(0, index.flatten()).view(*index.shape, *flat.shape[1:]).transpose(1, 2)

    outputs = []
    for index, causal in zip(packed_layout.gather, packed_layout.causal):
        examples, longest = index.shape
        # The query heads sharing a key head are stacked along the query axis: one plain batched matmul, no
        # repeated keys and values (grouped-query attention).
        q = per_example(query, index).reshape(examples, kv_heads, group * longest, query.shape[-1])
        k, v = per_example(key, index), per_example(value, index)
        scores = torch.matmul(q, k.transpose(2, 3)).view(examples, kv_heads, group, longest, longest) * scaling
        probs = F.softmax(scores + causal, dim=-1, dtype=torch.float32).to(query.dtype).view(q.shape[:-1] + (-1,))
        probs = F.dropout(probs, p=dropout, training=module.training)
        out = torch.matmul(probs, v).view(examples, heads, longest, -1).transpose(1, 2)
        outputs.append(out.reshape(examples * longest, -1))
    outputs.append(query.new_zeros((1, heads * value.shape[-1])))
    out = torch.cat(outputs).index_select(0, packed_layout.scatter)
    return out.view(rows, width, heads, -1), None


ROWS = "rows"
"""attention_plan: a packed micro-batch goes to the model as its rows."""
ONE_ROW = "one_row"
"""attention_plan: a packed micro-batch goes to the model flattened into one row (batches.flatten_packed)."""

MASKED_ATTENTION = frozenset({"eager", "sdpa", "flex_attention", PACKED_ATTENTION})
"""Attention implementations that keep packed examples apart in every row: transformers builds their
block-diagonal mask per row from `position_ids` (find_packed_sequence_indices), and packed_attention needs none."""


def attention_plan(device_type: str, attn_implementation: str | None) -> str:
    """How a packed micro-batch meets the attention: as its rows (ROWS) or flattened into one row (ONE_ROW).

    Flash attention has no mask: transformers finds packed examples in `position_ids` (and runs its
    variable-length kernel) only at batch size 1, so several packed rows would attend across examples. Flattened
    into one row, the examples are separate sequences of that kernel by construction. Mask-based attention keeps
    the rows: their mask is made per row, and one row of all tokens would make it rows times larger. A CPU keeps
    its rows always (training picks packed_attention or eager there, train/model.py); an implementation not known
    to be mask-based is flattened, as flash attention.

    >>> attention_plan("cuda", "flash_attention_2"), attention_plan("cuda", "sdpa"), attention_plan("cpu", "eager")
    ('one_row', 'rows', 'rows')
    """
    if device_type == "cpu" or attn_implementation in MASKED_ATTENTION:
        return ROWS
    return ONE_ROW


def register_packed_attention() -> str:
    """Make PACKED_ATTENTION a transformers attention implementation (masks as for sdpa); returns its name."""
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

    AttentionInterface.register(PACKED_ATTENTION, packed_attention)
    AttentionMaskInterface.register(PACKED_ATTENTION, sdpa_mask)
    return PACKED_ATTENTION
