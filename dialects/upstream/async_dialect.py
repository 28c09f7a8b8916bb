"""The subset of upstream MLIR's ``async`` dialect that opgraph uses for islands.

xDSL has no ``async`` dialect, so the ops we need are defined here so that they print in
exactly upstream's generic form (checked against the ``torch_mlir`` upstream bindings):

    %0:2 = "async.execute"(%dep, %v) <{operandSegmentSizes = array<i32: 1, 1>}> ({
    ^bb0(%arg0: T):
      "async.yield"(%r) : (T) -> ()
    }) : (!async.token, !async.value<T>) -> (!async.token, !async.value<T>)
    %1 = "async.await"(%0#1) : (!async.value<T>) -> T
    "async.await"(%0#0) : (!async.token) -> ()

Upstream ``async.execute`` is ``AttrSizedOperandSegments`` with the segment sizes stored as
an inherent *property* (``<{operandSegmentSizes = array<i32: deps, values>}>``), and its
region block arguments are the *unwrapped* types of the ``!async.value<T>`` operands.

This is an upstream dialect: it has no IRDL twin (upstream MLIR already knows it). The
verifiers mirror upstream's (same conditions, messages prefixed by op name and location).
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import lru_cache
from typing import Self

from opgraph.ir_construct import init_op
from opgraph.dialects.diagnostics import fail as _fail
from xdsl.dialects.builtin import DenseArrayBase, IndexType, i32
from xdsl.ir import (
    Attribute,
    Block,
    Dialect,
    Operation,
    ParametrizedAttribute,
    Region,
    SSAValue,
    TypeAttribute,
)
from xdsl.irdl import (
    AttrSizedOperandSegments,
    IRDLOperation,
    irdl_attr_definition,
    irdl_op_definition,
    lazy_traits_def,
    operand_def,
    opt_result_def,
    param_def,
    region_def,
    result_def,
    traits_def,
    var_operand_def,
    var_result_def,
)
from xdsl.parser import Parser
from xdsl.printer import Printer
from xdsl.traits import (
    HasParent,
    IsTerminator,
    Pure,
    RecursiveMemoryEffect,
    SingleBlockImplicitTerminator,
)
from xdsl.utils.exceptions import VerifyException

# ----------------------------------------------------------------------------- types


@irdl_attr_definition
class TokenType(ParametrizedAttribute, TypeAttribute):
    """``!async.token``: completion of an ``async.execute`` region."""

    name = "async.token"


@irdl_attr_definition
class ValueType(ParametrizedAttribute, TypeAttribute):
    """``!async.value<T>``: a value of type ``T`` that becomes available asynchronously."""

    name = "async.value"

    value_type: Attribute = param_def()

    def __init__(self, value_type: Attribute):
        super().__init__(value_type)

    def verify(self) -> None:
        if not isinstance(self.value_type, TypeAttribute):
            raise VerifyException(f"!async.value expects a type parameter, got {self.value_type}")


@irdl_attr_definition
class GroupType(ParametrizedAttribute, TypeAttribute):
    """``!async.group``: a group of tokens/values awaited together."""

    name = "async.group"


_TOKEN = TokenType()


@lru_cache(maxsize=1024)
def _segment_sizes(dependencies: int, values: int) -> DenseArrayBase:
    """``operandSegmentSizes`` of an ``async.execute`` (immutable, so shared)."""
    return DenseArrayBase.from_list(i32, [dependencies, values])


def unwrap(t: Attribute) -> Attribute:
    """``!async.value<T>`` -> ``T`` (other types unchanged)."""
    return t.value_type if isinstance(t, ValueType) else t


# ------------------------------------------------------------------------------- ops


@irdl_op_definition
class YieldOp(IRDLOperation):
    """``async.yield``: terminator of an ``async.execute`` body; yields the unwrapped values."""

    name = "async.yield"

    operands_ = var_operand_def()

    traits = lazy_traits_def(lambda: (IsTerminator(), Pure(), HasParent(ExecuteOp)))

    assembly_format = "($operands_^ `:` type($operands_))? attr-dict"

    def __init__(self, values: Sequence[SSAValue | Operation] = ()):
        # what IRDL's generic builder makes of operands=[values], built directly (one per island)
        init_op(self, operands=[SSAValue.get(v) for v in values])  # = Operation.__init__

    def verify_(self) -> None:
        parent = self.parent_op()
        if not isinstance(parent, ExecuteOp):
            raise _fail(self, "expects parent op 'async.execute'")
        expected = [unwrap(r.type) for r in parent.body_results]
        if [o.type for o in self.operands] != expected:
            raise _fail(
                self,
                "operand types do not match the types returned from the parent ExecuteOp",
            )


@irdl_op_definition
class ExecuteOp(IRDLOperation):
    """``async.execute [deps] (values as args) -> !async.value<..> { ... async.yield }``.

    Results: one ``!async.token`` then one ``!async.value<T>`` per yielded value.
    """

    name = "async.execute"

    dependencies = var_operand_def(TokenType)
    body_operands = var_operand_def(ValueType)

    token = result_def(TokenType)
    body_results = var_result_def(ValueType)

    body_region = region_def("single_block")

    irdl_options = (AttrSizedOperandSegments(as_property=True),)
    traits = traits_def(SingleBlockImplicitTerminator(YieldOp), RecursiveMemoryEffect())

    def __init__(
        self,
        dependencies: Sequence[SSAValue | Operation],
        body_operands: Sequence[SSAValue | Operation],
        result_types: Sequence[Attribute],
        body: Region,
        attributes: dict[str, Attribute] | None = None,
    ):
        """``result_types`` are the unwrapped (yielded) types; results are async values."""
        deps = [SSAValue.get(d) for d in dependencies]
        values = [SSAValue.get(v) for v in body_operands]
        # The op IRDL's generic builder would make (flat operands, segment sizes property),
        # built directly: lower-to-islands creates one per dataflow op.
        init_op(  # = Operation.__init__
            self,
            operands=[*deps, *values],
            result_types=[_TOKEN, *[ValueType(t) for t in result_types]],
            properties={AttrSizedOperandSegments.attribute_name: _segment_sizes(len(deps), len(values))},
            attributes={k: v for k, v in (attributes or {}).items() if v is not None},
            regions=[body],
        )

    # custom syntax (upstream's):
    #   async.execute [%dep, ...] (%v as %arg: !async.value<T>, ...) -> !async.value<U>
    #       attributes {...} { ... async.yield ... }
    @classmethod
    def parse(cls, parser: Parser) -> Self:
        deps = (
            parser.parse_optional_comma_separated_list(
                parser.Delimiter.SQUARE, lambda: parser.parse_operand(TokenType())
            )
            or []
        )

        def parse_body_operand():
            operand = parser.parse_unresolved_operand()
            parser.parse_keyword("as")
            arg = parser.parse_argument(expect_type=False)
            parser.parse_punctuation(":")
            return operand, arg, parser.parse_type()

        triples = (
            parser.parse_optional_comma_separated_list(parser.Delimiter.PAREN, parse_body_operand)
            or []
        )
        values = [parser.resolve_operand(o, t) for o, _, t in triples]
        args = [a.resolve(unwrap(t)) for _, a, t in triples]
        result_types: list[Attribute] = []
        if parser.parse_optional_punctuation("->"):
            result_types = parser.parse_optional_comma_separated_list(
                parser.Delimiter.PAREN, parser.parse_type
            ) or [parser.parse_type()]
        for t in result_types:
            if not isinstance(t, ValueType):
                parser.raise_error(f"async.execute results must be !async.value<...>, got {t}")
        attrs = parser.parse_optional_attr_dict_with_keyword()
        region = parser.parse_region(args)  # like upstream: the async.yield must be written
        return cls(
            deps,
            values,
            [unwrap(t) for t in result_types],
            region,
            dict(attrs.data) if attrs is not None else None,
        )

    def print(self, printer: Printer) -> None:
        if self.dependencies:
            printer.print_string(" [")
            printer.print_list(self.dependencies, printer.print_operand)
            printer.print_string("]")
        if self.body_operands:
            printer.print_string(" (")
            pairs = list(zip(self.body_operands, self.body.args))

            def print_pair(pair) -> None:
                value, arg = pair
                printer.print_operand(value)
                printer.print_string(" as ")
                printer.print_operand(arg)
                printer.print_string(": ")
                printer.print_attribute(value.type)

            printer.print_list(pairs, print_pair)
            printer.print_string(")")
        results = [r.type for r in self.body_results]
        if results:
            printer.print_string(" -> ")
            if len(results) == 1:
                printer.print_attribute(results[0])
            else:
                printer.print_string("(")
                printer.print_list(results, printer.print_attribute)
                printer.print_string(")")
        printer.print_op_attributes(self.attributes, print_keyword=True)
        printer.print_string(" ")
        printer.print_region(self.body_region, print_entry_block_args=False)

    @staticmethod
    def body_block_for(body_operands: Sequence[SSAValue]) -> Block:
        """An empty body block whose arguments unwrap the given async values."""
        return Block(arg_types=[unwrap(v.type) for v in body_operands])

    @property
    def body(self) -> Block:
        return self.body_region.block

    def verify_(self) -> None:
        if len(self.body_region.blocks) != 1:
            raise _fail(self, "expects a body region with exactly one block")
        arg_types = [a.type for a in self.body.args]
        unwrapped = [unwrap(o.type) for o in self.body_operands]
        if arg_types != unwrapped:
            raise _fail(
                self,
                "async body region argument types do not match the execute operation "
                "arguments types",
            )
        last = self.body.last_op
        if not isinstance(last, YieldOp):
            raise _fail(self, "body must end in 'async.yield'")


@irdl_op_definition
class AwaitOp(IRDLOperation):
    """``async.await``: blocks until a token/value is ready; unwraps values."""

    name = "async.await"

    operand = operand_def(TokenType | ValueType)
    result = opt_result_def()

    def __init__(self, operand: SSAValue | Operation):
        value = SSAValue.get(operand)
        result_types = [] if isinstance(value.type, TokenType) else [unwrap(value.type)]
        super().__init__(operands=[value], result_types=[result_types])

    # custom syntax: async.await %v : !async.value<T>   /   async.await %t : !async.token
    @classmethod
    def parse(cls, parser: Parser) -> Self:
        operand = parser.parse_unresolved_operand()
        parser.parse_punctuation(":")
        value = parser.resolve_operand(operand, parser.parse_type())
        op = cls(value)
        attrs = parser.parse_optional_attr_dict()
        op.attributes.update(attrs)
        return op

    def print(self, printer: Printer) -> None:
        printer.print_string(" ")
        printer.print_operand(self.operand)
        printer.print_string(" : ")
        printer.print_attribute(self.operand.type)
        printer.print_op_attributes(self.attributes)

    def verify_(self) -> None:
        t = self.operand.type
        if isinstance(t, TokenType):
            if self.result is not None:
                raise _fail(self, "awaiting a token must not produce a result")
        elif isinstance(t, ValueType):
            if self.result is None:
                raise _fail(self, "awaiting a value must produce a result")
            if self.result.type != t.value_type:
                raise _fail(
                    self, "result type must match the operand value type"
                )


@irdl_op_definition
class CreateGroupOp(IRDLOperation):
    """``async.create_group %size : !async.group``."""

    name = "async.create_group"

    size = operand_def(IndexType)
    result = result_def(GroupType)

    assembly_format = "$size `:` type($result) attr-dict"

    def __init__(self, size: SSAValue | Operation):
        super().__init__(operands=[size], result_types=[GroupType()])


@irdl_op_definition
class AddToGroupOp(IRDLOperation):
    """``async.add_to_group %tok, %group``: returns the rank (index) in the group."""

    name = "async.add_to_group"

    operand = operand_def(TokenType | ValueType)
    group = operand_def(GroupType)
    rank = result_def(IndexType)

    assembly_format = "$operand `,` $group `:` type($operand) attr-dict"

    def __init__(self, operand: SSAValue | Operation, group: SSAValue | Operation):
        super().__init__(operands=[operand, group], result_types=[IndexType()])


@irdl_op_definition
class AwaitAllOp(IRDLOperation):
    """``async.await_all %group``: waits for every token/value of the group."""

    name = "async.await_all"

    operand = operand_def(GroupType)

    assembly_format = "$operand attr-dict"

    def __init__(self, group: SSAValue | Operation):
        super().__init__(operands=[group])


Async = Dialect(
    "async",
    [ExecuteOp, YieldOp, AwaitOp, CreateGroupOp, AddToGroupOp, AwaitAllOp],
    [TokenType, ValueType, GroupType],
)
