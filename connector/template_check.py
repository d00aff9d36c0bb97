"""Compare the configured templates with what the WhatsApp Business Account really has: on
demand (``storeloop templates check``), and as Meta announces changes (``template_news``)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from connector import events as ev
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
    listed = [b for b in (_component(remote, "BUTTONS") or {}).get("buttons", []) if isinstance(b, dict)]
    remote_buttons = [str(b.get("type", "")).upper() for b in listed]
    ours = [b.type.upper() for b in tpl.buttons]
    if remote_buttons != ours:
        problems.append(f"buttons are {remote_buttons or 'none'}, config has {ours or 'none'}")
    else:
        problems += [f"button {i} has a fixed link ({b.get('url')}) but config appends {tpl.buttons[i - 1].suffix} to it: "
                     "Meta refuses the parameter" for i, b in enumerate(listed, 1)
                     if remote_buttons[i - 1] == "URL" and "{{1}}" not in str(b.get("url", ""))]
    problems += _header_problems(tpl, _component(remote, "HEADER"))
    return problems


def _header_problems(tpl: TemplateSettings, header: dict[str, Any] | None) -> list[str]:
    """A header every send would be refused for: the sender sends an image header when ``header_image``
    is set and no header parameter otherwise (a text header's variable is bound to nothing)."""
    if header is None:
        return ["config sends a header image but the template has no header"] if tpl.header_image else []
    kind = str(header.get("format", "TEXT")).upper()
    if kind == "TEXT":
        n = len(placeholders(str(header.get("text", ""))))
        if n:
            return [f"header has {n} parameter(s); config binds none (only an image header, header_image, can be sent)"]
        return ["config sends a header image but the template's header is text"] if tpl.header_image else []
    if kind != "IMAGE":
        return [f"template has a {kind} header; config can send only an image header (header_image)"]
    return [] if tpl.header_image else ["template has an image header but config sets no header_image: Meta refuses every send"]


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


# Meta's template status events (``message_template_status_update``) after which the store's
# messages using the template fail, or soon may, and what that means for them (error codes:
# platform-facts.md C4). Any other event (APPROVED, REINSTATED, PENDING, IN_APPEAL, LOCKED,
# LIMIT_EXCEEDED...) stops no send and tells nobody.
STOPPING = {
    "PAUSED": "its messages fail (error 132015) until Meta unpauses it",
    "DISABLED": "its messages fail for good (error 132016): submit a new template and bind the step to it",
    "REJECTED": "its messages fail: edit and resubmit it, or appeal",
    "FLAGGED": "it had negative feedback and is at risk of being disabled",
    "ARCHIVED": "it was archived in WhatsApp Manager: unarchive it",
    "PENDING_DELETION": "it is being deleted: its messages will fail",
    "DELETED": "it was deleted: its messages fail",
}
USABLE_AGAIN = ("APPROVED", "REINSTATED")


@dataclass(frozen=True, slots=True)
class TemplateNews:
    """What Meta said about one of a store's templates, for the store's owner."""

    name: str
    language: str
    steps: tuple[str, ...]  # the journey steps that send it
    reason: str
    only_open: bool = False  # good news: added to the template's open case, if one is; else nobody is told


def template_subject(name: str, language: str) -> str:
    """A template's key: its cases and inbox rows are filed under it."""
    return f"template:{name}:{language}"


def _language(code: str) -> str:
    # Meta's template API writes en_US; its webhook reference (and pywa's sample) show en-US, pt-BR
    return code.replace("-", "_").lower()


def _utc(at: datetime) -> str:
    return f"{at:%Y-%m-%d %H:%M} UTC"


def _meta_said(e: ev.TemplateStatusChanged) -> str:
    """Meta's own words on a status change: its reason (``NONE`` for a pause says nothing), the
    pause's title and description, a rejection's explanation, the disable date."""
    said = [e.reason if e.reason and e.reason.upper() != "NONE" else None,
            ": ".join(p for p in (e.title, e.description) if p) or None,
            e.rejection, f"Meta recommends: {e.recommendation}" if e.recommendation else None,
            f"disable date {_utc(e.disable_date)}" if e.disable_date else None]
    words = "; ".join(w for w in said if w)
    return f" ({words})" if words else ""


def templates_named(templates: tuple[TemplateSettings, ...], name: str, language: str) -> tuple[TemplateSettings, ...]:
    """The store's bindings of one of the account's templates (Meta names it by name and language)."""
    return tuple(t for t in templates if t.name == name and _language(t.language) == _language(language))


# Meta's template quality ratings (``message_template_quality_update``): RED is low quality, after
# which Meta pauses the template (its status news follows, ``STOPPING``); YELLOW is medium.
QUALITY_WORDS = {"GREEN": "high", "YELLOW": "medium", "RED": "low", "UNKNOWN": "not rated yet"}


def template_quality_news(templates: tuple[TemplateSettings, ...], event: ev.TemplateQualityChanged) -> TemplateNews | None:
    """Whether Meta's new quality rating of a template the store sends tells its owner something:
    RED opens the template's case (added to it when one is open, a pause's, say); YELLOW and GREEN
    only add to an open one. None: not the store's template."""
    used = templates_named(templates, event.name, event.language)
    if not used:
        return None
    steps = tuple(t.step for t in used)
    was = f", was {event.previous_score}" if event.previous_score else ""
    what = (f"WhatsApp template {event.name} ({event.language}), used by {', '.join(steps)}, is rated "
            f"{event.score} ({QUALITY_WORDS.get(event.score, event.score.lower())} quality{was})")
    if event.score == "RED":
        return TemplateNews(event.name, event.language, steps,
                            f"{what}: customers block or report it. Meta pauses a template that stays RED (error 132015 on "
                            "each send); review its text and whom the step sends it to, or bind the step to another template")
    return TemplateNews(event.name, event.language, steps, f"{what}", only_open=True)


def template_news(templates: tuple[TemplateSettings, ...],
                  event: ev.TemplateStatusChanged | ev.TemplateCategoryChanged) -> TemplateNews | None:
    """Whether Meta's news about a template concerns a store (one of its ``templates`` by name
    and language) and stops or changes its sends: a status after which its messages fail, or a
    category other than the config's (Meta prices and limits a template by its own category).
    None: not the store's template, or nothing its owner must act on."""
    used = templates_named(templates, event.name, event.language)
    if not used:
        return None
    steps = tuple(t.step for t in used)
    what = f"WhatsApp template {event.name} ({event.language}), used by {', '.join(steps)},"
    if isinstance(event, ev.TemplateStatusChanged):
        if event.status in USABLE_AGAIN:
            return TemplateNews(event.name, event.language, steps, f"{what} is {event.status} again: it can be sent", only_open=True)
        if event.status not in STOPPING:
            return None
        return TemplateNews(event.name, event.language, steps,
                            f"{what} is now {event.status}{_meta_said(event)}: {STOPPING[event.status]}")
    wrong = sorted({t.category.upper() for t in used if t.category.upper() != event.category})
    if not wrong:
        return TemplateNews(event.name, event.language, steps, f"{what} is {event.category} again, as the config says",
                            only_open=True)
    if event.correct_category:  # Meta's notice ahead of the change
        when = f" on {_utc(event.effective_at)}" if event.effective_at else ""
        change = f"will be recategorised from {event.new_category} to {event.category}{when}"
    else:
        was = f"from {event.previous_category} " if event.previous_category else ""
        change = f"was recategorised {was}to {event.category}"
    return TemplateNews(event.name, event.language, steps,
                        f"{what} {change} by Meta; the config sends it as {'/'.join(wrong)}: Meta prices and limits "
                        f"it as {event.category}. Bind the step to a {'/'.join(wrong).lower()} template, or appeal")
