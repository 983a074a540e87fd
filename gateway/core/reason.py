"""One rule's objection to a request (Reason): shared by decisions and by the quota plans that carry one."""

from dataclasses import dataclass

from gateway.core.codes import Code
from gateway.core.policy import RuleId


@dataclass(frozen=True, slots=True)
class Reason:
    """One rule's objection: its code, the rule, whether enforced now, and why."""

    code: Code
    rule: RuleId | None
    enforced: bool
    detail: str
    citation: str = ""
