"""Kubernetes' CEL for ValidatingAdmissionPolicies, as far as gpulet's policy
(deploy/admission) needs it, on celpy (cel-python), which knows only the language itself.

What the API server does and celpy alone does not (k8s.io/apiserver, admission/plugin/cel and
policy/validating, release 1.30):

- `variables.<name>`: each of `spec.variables`, in order, may use the ones before it. The API
  server evaluates them lazily; here they are evaluated in order and an error is kept as the
  variable's value, so that it surfaces only where the variable is used, as it would there.
- `has(e.f)` is an error when `e` itself is (cel-go); celpy answers false.
- `<list of strings>.join([separator])`, from cel-go's strings extension library, which
  Kubernetes' CEL environment includes. It is the only extension function the policy uses.
- The activation: `object` and `oldObject` are the objects as unstructured maps (fields left
  empty are absent, `oldObject` is null on CREATE), `request` is the AdmissionRequest without
  the objects (its empty fields absent too: no `extra` where the user has none), and `params`
  and `namespaceObject` are null.
- A validation's outcome: an error is decided by the failure policy; false denies, with the
  `messageExpression`'s string unless it fails, is blank, has a line break or is longer than
  5000 bytes, else `message`, else the expression itself.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import celpy
import lark
from celpy import celtypes
from celpy.adapter import json_to_cel
from celpy.evaluation import CELEvalError, Evaluator, NameContainer, Result

Doc = dict[str, Any]

#: The longest message a messageExpression may give (k8s.io/apiserver/pkg/apis/cel).
MAX_MESSAGE_BYTES = 5000
#: The node a pod-bound service-account token was issued on, in the user's extra (1.30+).
NODE_NAME_EXTRA = "authentication.kubernetes.io/node-name"


def _join(items: Any, separator: Any = None) -> celtypes.StringType:
    """`list(string).join() -> string` and `list(string).join(string) -> string` (cel-go's
    strings extension): the strings in order, with the separator (default none) between."""
    if not isinstance(items, celtypes.ListType) or not all(
        isinstance(i, celtypes.StringType) for i in items
    ):
        raise TypeError(f"no such overload: join on {type(items).__name__}")
    if separator is None:
        separator = celtypes.StringType("")
    if not isinstance(separator, celtypes.StringType):
        raise TypeError(f"no such overload: join({type(separator).__name__})")
    return celtypes.StringType(str(separator).join(str(i) for i in items))


#: The Kubernetes extension functions the policy uses, by name.
FUNCTIONS: dict[str, Callable[..., Any]] = {"join": _join}


class _KubernetesEvaluator(Evaluator):
    """celpy's evaluator with cel-go's `has()`: an error when the operand is, and for
    anything but a map, an error too (Kubernetes' unstructured objects are maps)."""

    def sub_evaluator(self, ast: lark.Tree[Any]) -> Evaluator:
        # Macros' bodies (exists, filter, ...) evaluate with the same semantics.
        return _KubernetesEvaluator(ast, activation=self.activation)

    # celpy declares BoolType; an error is a value to its evaluator like any other.
    def macro_has_eval(self, exprlist: lark.Tree[Any]) -> Result:  # type: ignore[override]
        node: Any = exprlist
        while isinstance(node, lark.Tree) and node.data != "member_dot":
            if len(node.children) != 1:
                return CELEvalError("has() takes one field selection, such as has(a.b)")
            node = node.children[0]
        if not isinstance(node, lark.Tree):
            return CELEvalError("has() takes one field selection, such as has(a.b)")
        operand_tree, field = node.children
        name = str(field)  # the IDENT token
        operand = self.visit(operand_tree)
        if isinstance(operand, CELEvalError):
            return operand
        if isinstance(operand, celtypes.MapType):
            return celtypes.BoolType(celtypes.StringType(name) in operand)
        if isinstance(operand, NameContainer):
            return celtypes.BoolType(name in operand)
        return CELEvalError(f"has(): no field selection on {type(operand).__name__}")


class _KubernetesRunner(celpy.InterpretedRunner):
    def evaluate(self, context: Mapping[str, Any]) -> Any:
        return _KubernetesEvaluator(ast=self.ast, activation=self.new_activation()).evaluate(
            context
        )


class Program:
    """One compiled expression. `evaluate` answers its value, or the CELEvalError it gave."""

    def __init__(self, expression: str) -> None:
        self.expression = expression
        env = celpy.Environment(runner_class=_KubernetesRunner)
        self._runner = env.program(env.compile(expression), functions=FUNCTIONS)

    def evaluate(self, activation: Mapping[str, Any]) -> Any:
        try:
            return self._runner.evaluate(dict(activation))
        except CELEvalError as e:
            return e


def compile_expression(expression: str) -> Program:
    """Compiles (parses) one expression; a syntax error raises celpy's CELParseError."""
    return Program(expression)


def to_cel(value: Any) -> Any:
    """A JSON value as CEL sees Kubernetes' unstructured objects."""
    return json_to_cel(value)


def pruned(value: Any) -> Any:
    """An object as Kubernetes' unstructured converter gives it: no null fields. (It also
    leaves out the empty `omitempty` fields; the tests' objects are written without them.)"""
    if isinstance(value, dict):
        return {k: pruned(v) for k, v in value.items() if v is not None}
    if isinstance(value, list):
        return [pruned(v) for v in value]
    return value


@dataclass(frozen=True)
class User:
    username: str
    groups: tuple[str, ...] = ()
    extra: Mapping[str, Sequence[str]] | None = None


def resource_of(kind: str) -> str:
    """A kind's resource, as Kubernetes guesses it (meta.UnsafeGuessKindToResource): Pod ->
    pods, Lease -> leases, NodeTopology -> nodetopologies."""
    lower = kind.lower()
    if lower.endswith("s"):
        return lower + "es"
    if lower.endswith("y"):
        return lower[:-1] + "ies"
    return lower + "s"


def admission_request(
    operation: str, user: User, obj: Doc, sub_resource: str = "", dry_run: bool = False
) -> Doc:
    """The `request` variable for a request on an object of `obj`'s apiVersion and kind (a
    core/v1 pod where it names none), as CreateAdmissionRequest builds it and the
    unstructured converter leaves it (no objects in it; empty fields absent)."""
    meta = obj.get("metadata") or {}
    kind_name = str(obj.get("kind") or "Pod")
    group, _, version = str(obj.get("apiVersion") or "v1").rpartition("/")
    kind = {"group": group, "version": version, "kind": kind_name}
    resource = {"group": group, "version": version, "resource": resource_of(kind_name)}
    user_info: Doc = {"username": user.username}
    if user.groups:
        user_info["groups"] = list(user.groups)
    if user.extra:
        user_info["extra"] = {k: list(v) for k, v in user.extra.items()}
    request: Doc = {
        "kind": kind,
        "resource": resource,
        "requestKind": kind,
        "requestResource": resource,
        "operation": operation,
        "userInfo": user_info,
        "dryRun": dry_run,  # a pointer: there even when false
    }
    if sub_resource:
        request["subResource"] = request["requestSubResource"] = sub_resource
    for key in ("name", "namespace"):
        if meta.get(key):
            request[key] = meta[key]
    return request


@dataclass(frozen=True)
class Decision:
    """One validation's outcome: `deny` (with its message), or an error."""

    deny: bool
    message: str = ""
    error: str = ""


class Policy:
    """A ValidatingAdmissionPolicy's variables, validations and messages, compiled."""

    def __init__(self, policy: Doc) -> None:
        spec = policy["spec"]
        if spec.get("paramKind"):
            raise NotImplementedError("params: add them to tests/cel_k8s.py")
        self.failure_policy: str = spec.get("failurePolicy", "Fail")
        #: All must be true for the policy to apply at all (they see no `variables`).
        self.conditions = [Program(c["expression"]) for c in spec.get("matchConditions", [])]
        self.variables = [(v["name"], Program(v["expression"])) for v in spec.get("variables", [])]
        self.validations = spec["validations"]
        self.checks = [Program(v["expression"]) for v in self.validations]
        self.messages = [
            Program(v["messageExpression"]) if v.get("messageExpression") else None
            for v in self.validations
        ]

    def programs(self) -> list[Program]:
        return (
            self.conditions
            + [p for _, p in self.variables]
            + self.checks
            + [m for m in self.messages if m]
        )

    def matches(self, operation: str, user: User, obj: Doc, old: Doc | None = None) -> bool:
        """Whether the matchConditions let the policy apply (an error counts as a match that
        the failure policy then decides, as the API server does)."""
        activation = self.activation(operation, user, obj, old)
        for condition in self.conditions:
            result = condition.evaluate(activation)
            if isinstance(result, celtypes.BoolType) and not bool(result):
                return False
        return True

    def activation(
        self, operation: str, user: User, obj: Doc, old: Doc | None = None
    ) -> dict[str, Any]:
        """The variables an expression sees, `variables` included."""
        activation: dict[str, Any] = {
            "object": to_cel(pruned(obj)),
            "oldObject": to_cel(pruned(old) if old is not None else None),
            "request": to_cel(admission_request(operation, user, obj)),
            "params": None,
            "namespaceObject": None,
        }
        variables: dict[str, Any] = {}
        for name, program in self.variables:
            activation["variables"] = celtypes.MapType(
                {celtypes.StringType(k): v for k, v in variables.items()}
            )
            variables[name] = program.evaluate(activation)
        activation["variables"] = celtypes.MapType(
            {celtypes.StringType(k): v for k, v in variables.items()}
        )
        return activation

    def decide(
        self, operation: str, user: User, obj: Doc, old: Doc | None = None
    ) -> list[Decision]:
        """Each validation's decision, in order (ValidateResult.Decisions); none where the
        matchConditions leave the request alone."""
        if not self.matches(operation, user, obj, old):
            return []
        activation = self.activation(operation, user, obj, old)
        decisions = []
        for validation, check, message in zip(
            self.validations, self.checks, self.messages, strict=True
        ):
            result = check.evaluate(activation)
            if isinstance(result, CELEvalError):
                decisions.append(
                    Decision(deny=self.failure_policy == "Fail", error=str(result.args[0]))
                )
            elif isinstance(result, celtypes.BoolType) and bool(result):
                decisions.append(Decision(deny=False))
            else:
                decisions.append(
                    Decision(deny=True, message=self._message(validation, message, activation))
                )
        return decisions

    @staticmethod
    def _message(validation: Doc, program: Program | None, activation: Mapping[str, Any]) -> str:
        text = ""
        if program is not None:
            value = program.evaluate(activation)
            if isinstance(value, str):  # celpy's `+` gives str, not StringType
                text = value.strip()
                if len(text.encode()) > MAX_MESSAGE_BYTES or "\n" in text:
                    text = ""
        if not text:
            text = str(validation.get("message") or "").strip()
        return text or f"failed expression: {str(validation['expression']).strip()}"

    def admit(self, operation: str, user: User, obj: Doc, old: Doc | None = None) -> str | None:
        """None where the request is admitted, else the message the API server answers with
        (that of the first validation that denies, as the dispatcher reports it)."""
        for decision in self.decide(operation, user, obj, old):
            if decision.deny:
                return decision.message or decision.error
        return None


def evaluate(expression: str, **activation: Any) -> Any:
    """One expression on plain values (JSON-like), for testing the functions themselves."""
    return Program(expression).evaluate({k: to_cel(v) for k, v in activation.items()})


__all__ = [
    "FUNCTIONS",
    "NODE_NAME_EXTRA",
    "Decision",
    "Policy",
    "Program",
    "User",
    "admission_request",
    "compile_expression",
    "evaluate",
    "pruned",
    "resource_of",
]
