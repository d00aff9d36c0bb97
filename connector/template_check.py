"""Compare the configured templates with what the WhatsApp Business Account really has."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from connector.config import Settings, TemplateSettings
from connector.templates import placeholders


@dataclass(frozen=True, slots=True)
class Finding:
    store: str
    step: str
    name: str
    language: str
    result: str  # ok | missing | not approved | mismatch
    detail: str = ""

    @property
    def ok(self) -> bool:
        return self.result == "ok"


def _component(remote: dict[str, Any], kind: str) -> dict[str, Any] | None:
    return next((c for c in remote.get("components", []) if str(c.get("type", "")).upper() == kind), None)


def compare(tpl: TemplateSettings, remote: dict[str, Any]) -> list[str]:
    """What differs between our binding and the approved template (empty when they agree)."""
    problems: list[str] = []
    if str(remote.get("category", "")).lower() != tpl.category:
        problems.append(f"category is {remote.get('category')}, config says {tpl.category.upper()}")
    body = _component(remote, "BODY") or {}
    n_remote = len(placeholders(str(body.get("text", ""))))
    if n_remote != len(tpl.body):
        problems.append(f"body has {n_remote} parameter(s), config binds {len(tpl.body)}")
    remote_buttons = [str(b.get("type", "")).upper() for b in (_component(remote, "BUTTONS") or {}).get("buttons", [])]
    ours = [b.type.upper() for b in tpl.buttons]
    if remote_buttons != ours:
        problems.append(f"buttons are {remote_buttons or 'none'}, config has {ours or 'none'}")
    if tpl.header_image and _component(remote, "HEADER") is None:
        problems.append("config sends a header image but the template has no header")
    return problems


def check_templates(settings: Settings, remote: list[dict[str, Any]]) -> list[Finding]:
    by_key = {(t.get("name"), t.get("language")): t for t in remote}
    findings: list[Finding] = []
    for store in settings.stores:
        for tpl in store.templates:
            found = by_key.get((tpl.name, tpl.language))
            base = dict(store=store.key, step=tpl.step, name=tpl.name, language=tpl.language)
            if found is None:
                findings.append(Finding(**base, result="missing", detail="not in the business account; submit it (templates export)"))
                continue
            status = str(found.get("status", "")).upper()
            if status != "APPROVED":
                findings.append(Finding(**base, result="not approved", detail=f"status {status or 'unknown'}"))
                continue
            problems = compare(tpl, found)
            findings.append(Finding(**base, result="mismatch" if problems else "ok", detail="; ".join(problems)))
    return findings
