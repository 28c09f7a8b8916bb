"""The subset of upstream MLIR's ``mpi`` dialect that opgraph's lowered plans use.

xDSL ships a dialect named ``mpi`` that is not upstream's (``mpi.comm.rank`` vs upstream's
``mpi.comm_rank``, no ``!mpi.comm``), so the ops opgraph prints are defined here, in
upstream's generic form (checked against the ``torch_mlir`` upstream bindings)::

    %world = "mpi.comm_world"() : () -> !mpi.comm
    %err, %rank = "mpi.comm_rank"(%world) : (!mpi.comm) -> (!mpi.retval, i32)
    %err2, %size = "mpi.comm_size"(%world) : (!mpi.comm) -> (!mpi.retval, i32)
    %err3 = "mpi.barrier"(%world) : (!mpi.comm) -> !mpi.retval

Upstream's collectives (``mpi.allreduce``, ``mpi.allgather``, ``mpi.send``/``recv``) move
``memref`` buffers and take the reduction as an enum property; opgraph's collectives move
Arrow tables (``!df.table``) of data-dependent size per rank (an ``alltoallv`` of variable
buffers, which upstream ``mpi`` has no op for), so table movement stays ``comm.*`` and
the communicator (``!mpi.comm``) is what the lowered plan passes to every kernel that
communicates (see ``passes/lower_to_kernels.py``).

This is an upstream dialect: no IRDL twin.
"""

from __future__ import annotations

from xdsl.dialects.builtin import i32
from xdsl.ir import Dialect, ParametrizedAttribute, TypeAttribute
from xdsl.irdl import (
    IRDLOperation,
    irdl_attr_definition,
    irdl_op_definition,
    operand_def,
    result_def,
    traits_def,
)
from xdsl.traits import Pure


@irdl_attr_definition
class CommType(ParametrizedAttribute, TypeAttribute):
    """``!mpi.comm``: an MPI communicator."""

    name = "mpi.comm"


@irdl_attr_definition
class RetvalType(ParametrizedAttribute, TypeAttribute):
    """``!mpi.retval``: the return code of an MPI call."""

    name = "mpi.retval"


@irdl_op_definition
class CommWorldOp(IRDLOperation):
    """``MPI_COMM_WORLD``."""

    name = "mpi.comm_world"
    comm = result_def(CommType)
    traits = traits_def(Pure())

    def __init__(self) -> None:
        super().__init__(result_types=[CommType()])


@irdl_op_definition
class CommRankOp(IRDLOperation):
    name = "mpi.comm_rank"
    comm = operand_def(CommType)
    retval = result_def(RetvalType)
    rank = result_def(i32)

    def __init__(self, comm) -> None:
        super().__init__(operands=[comm], result_types=[RetvalType(), i32])


@irdl_op_definition
class CommSizeOp(IRDLOperation):
    name = "mpi.comm_size"
    comm = operand_def(CommType)
    retval = result_def(RetvalType)
    size = result_def(i32)

    def __init__(self, comm) -> None:
        super().__init__(operands=[comm], result_types=[RetvalType(), i32])


@irdl_op_definition
class BarrierOp(IRDLOperation):
    name = "mpi.barrier"
    comm = operand_def(CommType)
    retval = result_def(RetvalType)

    def __init__(self, comm) -> None:
        super().__init__(operands=[comm], result_types=[RetvalType()])


MPI = Dialect("mpi", [CommWorldOp, CommRankOp, CommSizeOp, BarrierOp], [CommType, RetvalType])
