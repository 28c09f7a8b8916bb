"""xDSL definition of upstream MLIR's ``vector.yield``, the one upstream op we use from the
vector dialect (xDSL does not define it).

Why this op: IRDL cannot declare terminators, and upstream requires every block in a region
of an IRDL-defined op to end in one. ``vector.yield`` (Pure, ReturnLike, Terminator, any
operand types) is the upstream terminator that verifies under any parent op and for any
value type, including ``!df.string`` (``llvm.return`` rejects non-LLVM types; ``scf.yield``
and ``func.return`` demand specific parents). Our expression regions end with it.
"""

from __future__ import annotations

from collections.abc import Sequence

from opgraph.ir_construct import init_op
from xdsl.dialects.builtin import AnyAttr
from xdsl.ir import Dialect, SSAValue
from xdsl.irdl import IRDLOperation, irdl_op_definition, traits_def, var_operand_def
from xdsl.traits import IsTerminator, Pure, ReturnLike


@irdl_op_definition
class YieldOp(IRDLOperation):
    name = "vector.yield"
    values = var_operand_def(AnyAttr())
    traits = traits_def(IsTerminator(), Pure(), ReturnLike())

    def __init__(self, values: Sequence[SSAValue]):
        # IRDL's generic builder gives the same op (one variadic operand group, nothing
        # else, so no segment sizes) at a quarter of the cost: passes build many of these
        init_op(self, operands=[SSAValue.get(v) for v in values])  # = Operation.__init__


Vector = Dialect("vector", [YieldOp], [])
