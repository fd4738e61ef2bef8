"""What ResNetMoD and MobileNetV2MoD share: where MoD blocks go."""
from typing import List, Sequence, Tuple, Union

MOD_PATTERNS = ('alternate', 'all', 'none')


def mod_block_masks(stage_blocks: Sequence[int],
                    pattern: Union[str, Sequence[Sequence[int]]] = 'alternate'
                    ) -> List[Tuple[bool, ...]]:
    """Which blocks of each stage are MoD blocks.

    Block 0 of every stage is always a standard block: it carries the stride and the projection
    shortcut, which a MoD block (fixed shape C -> C) cannot.

    Args:
        stage_blocks (Sequence[int]): number of blocks per stage.
        pattern: ``'alternate'`` (blocks 1, 3, 5, ... -- the paper's choice, Sec. 3.4),
            ``'all'`` (every block but block 0), ``'none'`` (the standard network), or an
            explicit per-stage mask such as ``[[0, 1, 0], [0, 1, 1, 1], ...]``.

    Returns:
        list[tuple[bool]]: one mask per stage.

    Example:
        >>> mod_block_masks((3, 4), 'alternate')
        [(False, True, False), (False, True, False, True)]
    """
    if isinstance(pattern, str):
        if pattern not in MOD_PATTERNS:
            raise ValueError(f'mod_pattern must be one of {list(MOD_PATTERNS)} or a per-stage '
                             f'mask, got {pattern!r}')
        rule = dict(alternate=lambda i: i % 2 == 1, all=lambda i: i >= 1,
                    none=lambda i: False)[pattern]
        return [tuple(rule(i) for i in range(n)) for n in stage_blocks]
    masks = [tuple(bool(v) for v in stage) for stage in pattern]
    if [len(m) for m in masks] != list(stage_blocks):
        raise ValueError(f'an explicit mod_pattern needs one mask per stage with one entry per '
                         f'block, i.e. lengths {list(stage_blocks)}; got '
                         f'{[len(m) for m in masks]}')
    if any(m and m[0] for m in masks):
        raise ValueError('block 0 of a stage cannot be a MoD block (it holds the stride and the '
                         'projection shortcut); set the first entry of every stage mask to 0')
    return masks
