"""Quick IR walks for compiler passes and verifiers.

xDSL's ``Operation.walk()`` nests a generator per op, region and block, so every op of an
expression region (inside a df.map inside an island) is handed up through half a dozen
generator frames; on 1,000-op pipelines the walks of passes and verification added up to a
good part of compile time. These build the same sequence as a list in one recursive loop.
"""

from __future__ import annotations

from xdsl.ir import Block, Operation, Region


def walk_ops(op: Operation) -> list[Operation]:
    """``list(op.walk())``: ``op``, then the ops of its regions in order, each followed by
    its own nested ops. A snapshot: IR changed afterwards is not reflected."""
    out = [op]
    if op.regions:
        _add_nested(op, out)
    return out


def walk_block(block: Block) -> list[Operation]:
    """``list(block.walk())``: the ops of ``block``, each followed by its nested ops."""
    out: list[Operation] = []
    _add_block(block, out)
    return out


def _add_nested(op: Operation, out: list[Operation]) -> None:
    for region in op.regions:
        block = region.first_block
        while block is not None:
            _add_block(block, out)
            block = block.next_block


def _add_block(block: Block, out: list[Operation]) -> None:
    append = out.append
    inner = block.first_op
    while inner is not None:
        append(inner)
        if inner.regions:
            _add_nested(inner, out)
        inner = inner._next_op  # the property next_op, without its call


# Region shape tests through the blocks' links: ``region.blocks`` builds a view object whose
# ``len()`` walks the blocks, and passes ask this of every op with regions.


def region_blocks(region: Region) -> list[Block]:
    """``list(region.blocks)`` through the blocks' links."""
    blocks = []
    block = region.first_block
    while block is not None:
        blocks.append(block)
        block = block.next_block
    return blocks


def only_block(region: Region) -> Block | None:
    """The region's block when it has exactly one, else None."""
    block = region.first_block
    return block if block is not None and block.next_block is None else None


def several_blocks(region: Region) -> bool:
    """``len(region.blocks) > 1``."""
    block = region.first_block
    return block is not None and block.next_block is not None
