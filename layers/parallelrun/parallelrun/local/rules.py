"""Playing EventBridge's scheduler: moto stores schedule rules but never fires them.

:class:`RuleClock` looks at the enabled rules that have a ``ScheduleExpression``, works out when
each is next due (:mod:`parallelrun.core.cron`), and when one is due delivers the event EventBridge
would to each of its SQS targets, with the target's ``Input`` or ``InputTransformer`` applied.
The clock is passed in, so a test moves time on by hand; the local runtime calls
:meth:`RuleClock.fire_due` every second. As on EventBridge, a rate counts from when the rule
was first seen, and a firing missed while the runtime was stopped is not made up for.
"""

from __future__ import annotations

import json
import logging
import re
import uuid
from datetime import datetime
from typing import Any

from parallelrun.aws import control, sqs
from parallelrun.core import cron
from parallelrun.core.errors import ExpressionError

log = logging.getLogger("parallelrun.local")
_PLACEHOLDER = re.compile(r"<([A-Za-z0-9_.\-]+)>")


class RuleClock:
    """Fires the stack's schedule rules when they are due (see the module's doc)."""

    def __init__(self) -> None:
        # rule name → (its expression, parsed, when first seen, when next due: None for never)
        self.due: dict[str, tuple[str, cron.Rate | cron.Cron, datetime, datetime | None]] = {}

    def fire_due(self, now: datetime) -> list[str]:
        """Deliver every rule due at ``now``; the names of those fired."""
        fired = []
        seen = set()
        for rule in control.schedule_rules():
            name, text = rule["Name"], rule["ScheduleExpression"]
            seen.add(name)
            known = self.due.get(name)
            if known is None or known[0] != text:
                try:
                    parsed = cron.parse(text)
                except ExpressionError as error:
                    log.warning("rule %s has a schedule this runtime cannot read: %s", name, error)
                    continue
                known = self.due[name] = (text, parsed, now, parsed.next_after(now, now))
            _, parsed, anchor, due = known
            if due is not None and now >= due:
                deliver(rule, due)
                fired.append(name)
                self.due[name] = (text, parsed, anchor, parsed.next_after(max(now, due), anchor))
        for gone in set(self.due) - seen:
            del self.due[gone]
        return fired


def deliver(rule: dict[str, Any], when: datetime) -> None:
    """Send the rule's scheduled event, as its targets want it, to each SQS target."""
    arn = rule["Arn"]
    _, _, _, region, account, _ = arn.split(":", 5)
    event = {"version": "0", "id": str(uuid.uuid4()), "detail-type": "Scheduled Event", "source": "aws.events",
             "account": account, "time": when.strftime("%Y-%m-%dT%H:%M:%SZ"), "region": region,
             "resources": [arn], "detail": {}}
    for target in control.rule_targets(rule["Name"]):
        _, _, service, _, owner, queue = target["Arn"].split(":", 5)
        if service != "sqs":
            log.warning("rule %s: only SQS targets are delivered locally, not %s", rule["Name"], target["Arn"])
            continue
        sqs.send_body(sqs.queue_url(queue, owner), target_input(target, event))


def target_input(target: dict[str, Any], event: dict[str, Any]) -> str:
    """What a target receives: its constant ``Input``, its ``InputTransformer`` applied to the
    event, or the event itself."""
    if "Input" in target:
        return target["Input"]
    transformer = target.get("InputTransformer")
    if not transformer:
        return json.dumps(event)
    values = {name: _path(event, path) for name, path in (transformer.get("InputPathsMap") or {}).items()}
    template = transformer["InputTemplate"]
    out, start = [], 0
    for match in _PLACEHOLDER.finditer(template):
        if match.group(1) not in values:
            continue
        value = values[match.group(1)]
        out.append(template[start:match.start()])
        # EventBridge's rule: inside a JSON string the bare value, outside it the JSON value.
        out.append(str(value) if _inside_string(template, match.start()) else json.dumps(value))
        start = match.end()
    out.append(template[start:])
    return "".join(out)


def _path(event: dict[str, Any], path: str) -> Any:
    """A ``$.a.b`` path of the event (dot notation, as EventBridge's input paths)."""
    value: Any = event
    for part in path.removeprefix("$").strip(".").split("."):
        if part:
            value = value.get(part) if isinstance(value, dict) else None
    return value


def _inside_string(template: str, position: int) -> bool:
    quotes, escaped = 0, False
    for char in template[:position]:
        if escaped:
            escaped = False
        elif char == "\\":
            escaped = True
        elif char == '"':
            quotes += 1
    return quotes % 2 == 1
